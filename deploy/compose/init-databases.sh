#!/bin/sh
# Creates one database per Omni service, owned by the Compose superuser ($POSTGRES_USER).
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d).
set -eu

for service in identity profile segmentation decisioning gateway; do
    echo "creating database omni_${service}"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -c "CREATE DATABASE omni_${service} OWNER \"$POSTGRES_USER\""
done
