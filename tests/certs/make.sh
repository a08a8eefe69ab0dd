#!/usr/bin/env bash
# Regenerates the test certificates (committed; valid for 100 years). Needs the openssl CLI.
#   ca.pem/ca.key          test CA
#   server.pem/server.key  localhost, 127.0.0.1, ::1 (signed by the CA)
#   other.pem/other.key    other.test (signed by the CA): the second certificate for SNI tests
#   client.pem/client.key  a client certificate signed by the CA
#   rogue-ca.pem, rogue-client.pem/.key  a client certificate from a CA the server does not trust
set -euo pipefail
cd "$(dirname "$0")"
days=36500
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {  # name subject
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -sha256 -days $days -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$1.pem"
}
leaf() {  # name subject san ca extendedKeyUsage
    key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=%s\n%s\n' \
        "$5" "${3:+subjectAltName=$3}" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$4.pem" -CAkey "$4.key" -CAcreateserial -sha256 \
        -days $days -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
ca ca "servers test CA"
ca rogue-ca "rogue test CA"
leaf server localhost "DNS:localhost,IP:127.0.0.1,IP:::1" ca serverAuth
leaf other other.test "DNS:other.test" ca serverAuth
leaf client "test client" "" ca clientAuth
leaf rogue-client "rogue client" "" rogue-ca clientAuth
rm -f ./*.srl ca.key rogue-ca.key
