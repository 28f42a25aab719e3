"""A small kustomize renderer: just the features deploy/k8s uses, so `make deploy-check` works offline.

Neither PyPI nor npm ships a kustomize binary that installs into this project's Python 3.11 environment, so
deploy/check.py renders the overlays with this module. Where a real kustomize is on the machine (`kustomize`
or `kubectl kustomize`), check.py renders with it as well and fails if the two disagree, which keeps this
renderer honest.

Supported, as kustomize (v5) does them:
- Kustomization: resources (files, multi-document, or directories holding a kustomization), components,
  namespace, patches, images.
- Component (kustomize.config.k8s.io/v1alpha1): resources and patches, applied to the resources accumulated
  so far by the kustomization that lists it.
- patches: `path` or inline `patch`; strategic merge patches (one or more documents, matched by kind and
  name, or by `target`) and JSON 6902 patches (add, remove, replace, test; need a `target`). A target may
  name group, version, kind, name, namespace, labelSelector (k=v,…) and annotationSelector (k=v,…).
- Strategic merge: maps merge, `null` deletes a key, `$patch: delete|replace`, lists of objects merge by
  their Kubernetes merge key (containers/env/volumes … by name, volumeMounts by mountPath, ports by
  containerPort or port, topologySpreadConstraints by topologyKey), other lists are replaced.
- namespace: set on every namespaced resource.
- images: name → newName, newTag, digest on containers and initContainers of pods and pod templates.

Anything else in a kustomization file (generators, labels, name prefixes, replacements, helm charts …) is
refused with an error rather than silently ignored.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "Kustomization": {"apiVersion", "kind", "resources", "components", "namespace", "patches", "images"},
    "Component": {"apiVersion", "kind", "resources", "components", "patches", "images"},
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
    "CSIDriver",
    "Node",
}
# Kubernetes' patchMergeKey of the object lists deploy/k8s patches; any other list is replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip",
}


class KustomizeError(Exception):
    """The kustomization cannot be rendered (bad input, or a feature this renderer does not support)."""


def render(directory: str | Path) -> list[Resource]:
    """Render the kustomization in directory, as `kustomize build directory` would (order aside)."""
    return _build(Path(directory).resolve(), expect="Kustomization", accumulated=None)


def resource_id(res: Resource) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name): what identifies a rendered resource."""
    meta = res.get("metadata") or {}
    return (res.get("apiVersion", ""), res.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


# --------------------------------------------------------------------------------------------- loading
def _load_kustomization(directory: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            if not isinstance(data, dict):
                raise KustomizeError(f"{path}: not a mapping")
            return data
    raise KustomizeError(f"{directory}: no kustomization file")


def _load_documents(path: Path) -> list[Resource]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise KustomizeError(f"{path}: every document needs kind and metadata")
    return docs


def _build(directory: Path, *, expect: str, accumulated: list[Resource] | None) -> list[Resource]:
    spec = _load_kustomization(directory)
    kind = spec.get("kind", "Kustomization")
    if kind != expect:
        raise KustomizeError(f"{directory}: expected a {expect}, found {kind}")
    unsupported = set(spec) - SUPPORTED_FIELDS[kind]
    if unsupported:
        raise KustomizeError(f"{directory}: fields not supported by this renderer: {sorted(unsupported)}")

    resources: list[Resource] = [] if accumulated is None else accumulated
    for entry in spec.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            _add(resources, _build(path, expect="Kustomization", accumulated=None), path)
        elif path.is_file():
            _add(resources, _load_documents(path), path)
        else:
            raise KustomizeError(f"{directory}: resource {entry!r} not found")
    for entry in spec.get("components") or []:
        path = (directory / entry).resolve()
        if not path.is_dir():
            raise KustomizeError(f"{directory}: component {entry!r} not found")
        resources = _build(path, expect="Component", accumulated=resources)

    for number, patch in enumerate(spec.get("patches") or []):
        _apply_patch(directory, number, patch, resources)
    if spec.get("namespace"):
        for res in resources:
            if res["kind"] not in CLUSTER_SCOPED:
                res["metadata"]["namespace"] = spec["namespace"]
            if res["kind"] in {"RoleBinding", "ClusterRoleBinding"}:
                raise KustomizeError("namespace on RoleBinding subjects is not supported by this renderer")
    for image in spec.get("images") or []:
        for res in resources:
            _set_images(res, image)
    return resources


def _add(resources: list[Resource], new: list[Resource], source: Path) -> None:
    known = {resource_id(r) for r in resources}
    for res in new:
        if resource_id(res) in known:
            raise KustomizeError(f"{source}: {resource_id(res)} is already defined")
        known.add(resource_id(res))
        resources.append(copy.deepcopy(res))


# --------------------------------------------------------------------------------------------- patches
def _apply_patch(directory: Path, number: int, entry: dict[str, Any], resources: list[Resource]) -> None:
    where = f"{directory}: patches[{number}]"
    if set(entry) - {"path", "patch", "target"}:
        raise KustomizeError(
            f"{where}: unsupported fields {sorted(set(entry) - {'path', 'patch', 'target'})}"
        )
    if "path" in entry:
        text = (directory / entry["path"]).read_text()
    elif "patch" in entry:
        text = entry["patch"]
    else:
        raise KustomizeError(f"{where}: needs path or patch")
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    target = entry.get("target")
    if len(docs) == 1 and isinstance(docs[0], list):
        if not target:
            raise KustomizeError(f"{where}: a JSON 6902 patch needs a target")
        matched = [r for r in resources if _matches(r, target)]
        if not matched:
            raise KustomizeError(f"{where}: target {target} matches nothing")
        for res in matched:
            _json6902(res, docs[0], where)
        return
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeError(f"{where}: a strategic merge patch must be a mapping")
        if target:
            matched = [r for r in resources if _matches(r, target)]
        else:
            matched = [
                r
                for r in resources
                if r["kind"] == doc.get("kind")
                and r["metadata"].get("name") == (doc.get("metadata") or {}).get("name")
                and _group(r) == _group(doc)
            ]
        if not matched:
            raise KustomizeError(f"{where}: no resource matches {doc.get('kind')}/{doc.get('metadata')}")
        for res in matched:
            patch = copy.deepcopy(doc)
            if target:
                # kustomize patches by selector whatever name the patch document carries
                patch.setdefault("metadata", {})["name"] = res["metadata"]["name"]
            merged = _merge(res, patch, field="")
            res.clear()
            res.update(merged)


def _group(res: Resource) -> str:
    api = str(res.get("apiVersion", ""))
    return api.split("/")[0] if "/" in api else ""


def _selector_matches(selector: str, values: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if values.get(key.strip()) != value.strip():
            return False
    return True


def _matches(res: Resource, target: dict[str, Any]) -> bool:
    meta = res["metadata"]
    api = str(res.get("apiVersion", ""))
    version = api.split("/")[-1]
    checks = {
        "group": lambda v: _group(res) == v,
        "version": lambda v: version == v,
        "kind": lambda v: res["kind"] == v,
        "name": lambda v: re.fullmatch(v, meta.get("name", "")) is not None,
        "namespace": lambda v: re.fullmatch(v, meta.get("namespace", "")) is not None,
        "labelSelector": lambda v: _selector_matches(v, meta.get("labels") or {}),
        "annotationSelector": lambda v: _selector_matches(v, meta.get("annotations") or {}),
    }
    for key, value in target.items():
        if key not in checks:
            raise KustomizeError(f"patch target field {key!r} is not supported")
        if not checks[key](value):
            return False
    return True


def _merge(base: Any, patch: Any, *, field: str) -> Any:
    """Strategic merge of patch into base (both JSON-like); returns the result."""
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        if directive not in (None, "merge"):
            raise KustomizeError(f"$patch: {directive} is not supported here")
        if not isinstance(base, dict):
            return _strip_directives(patch)
        result = dict(base)
        for key, value in patch.items():
            if key == "$patch":
                continue
            if value is None:
                result.pop(key, None)
            elif key in result:
                result[key] = _merge(result[key], value, field=key)
            else:
                result[key] = _strip_directives(value)
        return result
    if isinstance(patch, list) and isinstance(base, list):
        return _merge_list(base, patch, field=field)
    return copy.deepcopy(patch)


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        objects = [i for i in items if isinstance(i, dict)]
        if objects and all("containerPort" in i for i in objects):
            return "containerPort"
        if objects and all("port" in i for i in objects):
            return "port"
        return None
    return MERGE_KEYS.get(field)


def _merge_list(base: list[Any], patch: list[Any], *, field: str) -> list[Any]:
    key = _merge_key(field, base + patch)
    if key is None or not all(isinstance(i, dict) for i in base + patch):
        return [_strip_directives(i) for i in patch]
    result = [copy.deepcopy(i) for i in base]
    for item in patch:
        if key not in item:
            raise KustomizeError(f"{field}: patch item without merge key {key!r}")
        index = next((n for n, b in enumerate(result) if b.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(_strip_directives(item))
        else:
            result[index] = _merge(result[index], item, field=field)
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if k != "$patch" and v is not None}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json6902(res: Resource, operations: list[dict[str, Any]], where: str) -> None:
    for op in operations:
        parts = _pointer(op["path"])
        parent: Any = res
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                parent[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                parent.pop(index)
            elif kind == "test":
                if parent[index] != op["value"]:
                    raise KustomizeError(f"{where}: test failed at {op['path']}")
            else:
                raise KustomizeError(f"{where}: op {kind} not supported")
            continue
        if kind == "add":
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "replace":
            if last not in parent:
                raise KustomizeError(f"{where}: replace of missing {op['path']} in {resource_id(res)}")
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            if last not in parent:
                raise KustomizeError(f"{where}: remove of missing {op['path']} in {resource_id(res)}")
            del parent[last]
        elif kind == "test":
            if parent.get(last) != op["value"]:
                raise KustomizeError(f"{where}: test failed at {op['path']}")
        else:
            raise KustomizeError(f"{where}: op {kind} not supported")


# --------------------------------------------------------------------------------------------- images
def _split_image(image: str) -> tuple[str, str]:
    """("registry:5000/repo/name", ":tag" or "@sha256:…" or "")."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _pod_specs(res: Resource) -> list[dict[str, Any]]:
    spec = res.get("spec") or {}
    found = [spec]
    template = (spec.get("template") or {}).get("spec")
    if template:
        found.append(template)
    job_template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec")
    if job_template:
        found.append(job_template)
    return found


def _set_images(res: Resource, image: dict[str, Any]) -> None:
    for pod in _pod_specs(res):
        for field in ("containers", "initContainers"):
            for container in pod.get(field) or []:
                if not isinstance(container, dict) or "image" not in container:
                    continue
                name, suffix = _split_image(container["image"])
                if name != image["name"]:
                    continue
                if "newName" in image:
                    name = image["newName"]
                if "digest" in image:
                    suffix = "@" + image["digest"]
                elif "newTag" in image:
                    suffix = ":" + str(image["newTag"])
                container["image"] = name + suffix
