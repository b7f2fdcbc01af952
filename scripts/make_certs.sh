#!/usr/bin/env bash
# Make a local certificate authority and a SuperLink server certificate signed by it, for
# Flower deployments with TLS:
#   scripts/make_certs.sh [OUT_DIR=certs] [SERVER_NAMES=localhost,127.0.0.1] [DAYS=365]
# Writes OUT_DIR/ca.crt (give it to SuperNodes as --root-certificates and to `flwr` as
# root-certificates), OUT_DIR/ca.key (keep it private), OUT_DIR/server.pem + server.key (SuperLink
# --ssl-certfile/--ssl-keyfile; --ssl-ca-certfile is ca.crt). SERVER_NAMES are the DNS names and
# IP addresses clients use to reach the SuperLink; they go into the certificate's subjectAltName.
set -euo pipefail
out="${1:-certs}"
names="${2:-localhost,127.0.0.1}"
days="${3:-365}"
command -v openssl >/dev/null || { echo "make_certs.sh: openssl is not installed" >&2; exit 2; }
mkdir -p "$out"

san=""
IFS=',' read -ra parts <<< "$names"
for name in "${parts[@]}"; do
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then san+="IP:${name},"; else san+="DNS:${name},"; fi
done
san="${san%,}"

openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days "$days" \
  -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=pfedlora local CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -sha256 -nodes -keyout "$out/server.key" -out "$out/server.csr" \
  -subj "/CN=${parts[0]}" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days "$days" -sha256 -extfile "$out/server.ext" -out "$out/server.pem" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 600 "$out/ca.key" "$out/server.key"
echo "certificates in $out: ca.crt, server.pem, server.key (subjectAltName $san)"
