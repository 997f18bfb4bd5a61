#!/bin/sh
# Make a private CA, server certificates for etcd and PostgreSQL, a client certificate for
# tenure, and the secrets, in deploy/certs/ (for deploy/docker-compose.yml; on Kubernetes put the
# same files in Secrets). Run once: `sh deploy/certs.sh`. Needs openssl. Nothing here is
# meant to be committed.
set -eu
dir="$(dirname "$0")/certs"
mkdir -p "$dir"
cd "$dir"
[ -f ca.crt ] && { echo "deploy/certs already has a CA; remove it to start over"; exit 0; }

days=825
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=tenure private CA" -keyout ca.key -out ca.crt 2>/dev/null

# issue NAME COMMON_NAME SUBJECT_ALT_NAMES
issue() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
issue etcd etcd "DNS:etcd,DNS:localhost,IP:127.0.0.1"
issue postgres postgres "DNS:postgres,DNS:localhost,IP:127.0.0.1"
# The client certificate's CN is the user name: etcd and PostgreSQL (clientcert=verify-full)
# check it against the user tenure authenticates as.
issue tenure tenure "DNS:tenure"

secret() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
etcd_password="$(secret)"
pg_password="$(secret)"
printf '%s' "$(secret)" > admin-token
printf '%s' "$etcd_password" > etcd-password
printf '%s' "$(secret)" > etcd-root-password
printf '%s' "$pg_password" > postgres-password
printf 'postgres://tenure:%s@postgres:5432/tenure?sslmode=verify-full&sslrootcert=/certs/ca.crt&sslcert=/certs/tenure.crt&sslkey=/certs/tenure.key' \
    "$pg_password" > database-url
chmod 0644 ./*.crt
chmod 0600 ./*.key admin-token etcd-password etcd-root-password postgres-password database-url
# The containers run as other users: let them read the files they mount (only they see them).
chmod 0644 tenure.key etcd.key admin-token etcd-password etcd-root-password postgres-password database-url
echo "made deploy/certs: ca.crt, etcd.crt, postgres.crt, tenure.crt (+ keys) and the secrets"
