// Package kmsv2 is an end-to-end test of cofferd's Kubernetes KMS v2
// plugin with the kube-apiserver's own client code (k8s.io/apiserver: the
// envelope KMS v2 gRPC service and transformer, and the
// EncryptionConfiguration loader) against a real cofferd process.
//
// It is a module of its own so that k8s.io/apiserver, which is large,
// stays out of Coffer's dependencies; `make test` runs it.
package kmsv2
