// Package kmsv2 is cofferd's Kubernetes KMS v2 plugin: the gRPC
// KeyManagementService of k8s.io/kms/apis/v2 (Status, Encrypt, Decrypt) on
// its own unix socket, for the kube-apiserver on the same machine
// (docs/api.md, "Kubernetes KMS v2"; docs/kubernetes.md).
//
// The API server encrypts each object with a data key (DEK) it makes itself
// and asks the plugin to encrypt only that DEK (or its seed), so Encrypt and
// Decrypt carry a few dozen bytes. The plugin wraps them under one named
// Coffer key ([Config.Key]):
//
//   - key_id is [KeyID]: the key's name and the version that encrypted, so
//     it changes when the key rotates; the API server compares it with
//     Status's key_id to notice a rotation.
//   - The ciphertext is the Coffer ciphertext ("coffer:vN:…") as bytes.
//   - Encrypt returns one annotation, [AnnotationFormat]; the annotations
//     and the key name are the AEAD's additional data ([AAD]), so an
//     annotation altered in etcd makes Decrypt fail.
//
// Callers are identified by SO_PEERCRED when they connect (a gRPC
// transport credential that reads the peer's kernel credentials, as the
// HTTP API does per connection) and need the policy operations wrap
// (Encrypt) and unwrap (Decrypt) on the key; the node's [Backend] decides
// and records each call in the audit log before it is answered.
//
// k8s.io/kms's own pkg/service is not used: it listens on its own
// (without the stale/live socket handling, mode and group of
// daemon/platform), sets no message size limit and passes no peer
// identity to the service. Only the generated API is.
package kmsv2
