# /etc/coffer/cofferd.hcl: node 1 of a 3-node cluster, root key sealed by the
# machine's TPM 2.0 (spec/CONFIG.md has every setting).
#
# On node 2 and node 3 change node_id, cluster.addr and the certificate
# names, and set bootstrap = false (or remove it); they join with
# `coffer operator raft join 10.0.0.11:8201` (docs/operations.md).
#
# The service reaches /dev/tpmrm0 through DeviceAllow= in cofferd.service and
# the user coffer's membership in the group tss (coffer.sysusers).

node_id   = "node1"
data_dir  = "/var/lib/coffer"
log_level = "info"

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

seal "tpm" {
  device = "/dev/tpmrm0"
  # Bind the sealed root key to Secure Boot state: after a firmware or
  # bootloader change the node comes up sealed and waits for shares
  # (docs/devices.md). Leave pcrs out to seal without a PCR policy.
  pcrs = [7]
}

audit {
  path = "/var/log/coffer/audit.log"
}
