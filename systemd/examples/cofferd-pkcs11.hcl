# /etc/coffer/cofferd.hcl: node 1 of a 3-node cluster, root key sealed by a
# PKCS#11 HSM (spec/CONFIG.md has every setting).
#
# On node 2 and node 3 change node_id, cluster.addr, the certificate names
# and token_label, and set bootstrap = false (or remove it); they join with
# `coffer operator raft join 10.0.0.11:8201` (docs/operations.md).
#
# Files: this one 0640 root:coffer; tls/ holds ca.crt, node1.crt and
# node1.key (0640 root:coffer), made with `coffer tls ca create` and
# `coffer tls cert create`.

node_id   = "node1"
data_dir  = "/var/lib/coffer"
log_level = "info"

# Services that may connect are in the group coffer; policies decide what
# each of them may do. With cofferd.socket enabled, systemd makes this
# socket (its ListenStream= must be this path).
listener "unix" {
  path  = "/run/coffer/coffer.sock"
  mode  = "0660"
  group = "coffer"
}

admin {
  groups = ["coffer-admin"]
}

cluster {
  addr          = "10.0.0.11:8201"
  bootstrap     = true           # node 1 only: founds the cluster
  tls_cert_file = "tls/node1.crt" # relative to /etc/coffer
  tls_key_file  = "tls/node1.key"
  tls_ca_file   = "tls/ca.crt"
}

seal "pkcs11" {
  library      = "/usr/lib/softhsm/libsofthsm2.so" # the vendor's PKCS#11 module
  token_label  = "coffer-node1"
  # The user PIN comes from systemd: cofferd.service has
  # LoadCredentialEncrypted=hsm-pin, which decrypts
  # /etc/credstore.encrypted/hsm-pin (made with `systemd-creds encrypt`) into
  # $CREDENTIALS_DIRECTORY/hsm-pin, readable only by the service.
  pin_credential = "hsm-pin"
  key_label      = "coffer-seal"
  generate_key   = true
}

audit {
  path = "/var/log/coffer/audit.log"
}
