package daemon

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/keystore"
)

// The /v1/secrets routes (docs/api.md, "Secrets"). Authorisation is the
// same as for keys, with the secret_* operations matched against a
// policy's secrets patterns; every request is audited with key = the
// secret's name and key_version = the version read or written, never the
// value.

var (
	secretsRoutes = map[string]route{
		"GET": {accessAuthed, "", "secret-list", synced((*Server).handleListSecrets)},
	}
	secretRoutes = map[string]route{
		"GET":    {accessKey, api.OpSecretRead, api.OpSecretRead, synced((*Server).handleGetSecret)},
		"PUT":    {accessKey, api.OpSecretWrite, api.OpSecretWrite, (*Server).handlePutSecret},
		"DELETE": {accessKey, api.OpSecretDelete, api.OpSecretDelete, (*Server).handleDeleteSecret},
	}
	secretActionRoutes = map[string]map[string]route{
		"metadata": {
			"GET":   {accessKey, api.OpSecretRead, api.OpSecretRead, synced((*Server).handleSecretMetadata)},
			"PATCH": {accessKey, api.OpSecretWrite, api.OpSecretWrite, (*Server).handleUpdateSecretMetadata},
		},
		"destroy": {"POST": {accessKey, api.OpSecretDelete, api.OpSecretDelete, (*Server).handleDestroySecret}},
		"restore": {"POST": {accessKey, api.OpSecretDelete, api.OpSecretDelete, (*Server).handleRestoreSecret}},
	}
)

// matchSecrets routes /v1/secrets… (rest is the path after "/v1/secrets/").
func matchSecrets(path, rest string) (map[string]route, string) {
	if rest == "" {
		if strings.HasSuffix(path, "/") {
			return nil, ""
		}
		return secretsRoutes, ""
	}
	name, action, hasAction := strings.Cut(rest, "/")
	if !hasAction {
		return secretRoutes, name
	}
	if strings.Contains(action, "/") {
		return nil, ""
	}
	return secretActionRoutes[action], name
}

// objectKind names what an operation acts on, for denial messages.
func objectKind(op string) string {
	if slices.Contains(api.SecretOperations, op) {
		return "secret"
	}
	return "key"
}

func (s *Server) handleListSecrets(rc *reqCtx) error {
	names, err := s.ks.ListSecrets()
	if err != nil {
		return err
	}
	writeJSON(rc.w, http.StatusOK, api.SecretList{Secrets: s.visible(rc, api.OpSecretRead, names)})
	return nil
}

func (s *Server) handleGetSecret(rc *reqCtx) error {
	q := rc.r.URL.Query()
	version := 0
	for p, vs := range q {
		if p != "version" || len(vs) != 1 {
			return badRequest("unknown or repeated query parameter %q: only one version=N is accepted", truncate(p))
		}
		v, err := strconv.Atoi(vs[0])
		if err != nil || v < 1 {
			return badRequest("version %q is not a version number: use 1 or more (or leave it out for the latest)", truncate(vs[0]))
		}
		version = v
	}
	sv, err := s.ks.GetSecret(rc.name, version)
	if err != nil {
		return err
	}
	defer sv.Destroy()
	rc.au.keyVersion = sv.Version
	writeSecretValue(rc.w, sv)
	return nil
}

// writeSecretValue encodes the answer by hand into a buffer it zeroes
// (encoding/json's pooled buffers would keep the base64 value around).
func writeSecretValue(w http.ResponseWriter, sv *keystore.SecretValue) {
	v := sv.Value.Bytes()
	buf := make([]byte, 0, len(sv.Name)+base64.StdEncoding.EncodedLen(len(v))+96)
	defer func() { clear(buf[:cap(buf)]) }()
	buf = append(buf, `{"name":"`...)
	buf = append(buf, sv.Name...) // a valid name: no escaping needed
	buf = append(buf, `","version":`...)
	buf = strconv.AppendInt(buf, int64(sv.Version), 10)
	buf = append(buf, `,"value":"`...)
	buf = base64.StdEncoding.AppendEncode(buf, v)
	buf = append(buf, `","created_at":"`...)
	buf = sv.CreatedAt.UTC().AppendFormat(buf, time.RFC3339Nano)
	buf = append(buf, "\"}\n"...)
	writeRaw(w, http.StatusOK, buf)
}

func (s *Server) handlePutSecret(rc *reqCtx) error {
	var req api.PutSecretRequest
	err := decode(rc, &req)
	defer clear(req.Value)
	if err != nil {
		return err
	}
	if req.Value == nil {
		return badRequest(`value is required: send {"value": "<base64>"}`)
	}
	out, err := secretWrite(s, rc, func() (api.SecretWriteResponse, error) {
		return s.ks.PutSecret(rc.r.Context(), rc.name, req.Value, req.Cas)
	})
	if err != nil {
		return err
	}
	rc.au.keyVersion = out.Version
	s.log.Info("secret written", "secret", rc.name, "version", out.Version, "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusOK, out)
	return nil
}

func (s *Server) handleSecretMetadata(rc *reqCtx) error {
	m, err := s.ks.SecretMetadata(rc.name)
	if err != nil {
		return err
	}
	rc.au.keyVersion = m.LatestVersion
	writeJSON(rc.w, http.StatusOK, m)
	return nil
}

func (s *Server) handleUpdateSecretMetadata(rc *reqCtx) error {
	var req api.UpdateSecretMetadataRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	if req.MaxVersions == nil {
		return badRequest("nothing to update: send max_versions (1 to %d)", api.MaxSecretMaxVersionsLimit)
	}
	m, err := secretWrite(s, rc, func() (api.SecretMetadata, error) {
		return s.ks.UpdateSecretMetadata(rc.r.Context(), rc.name, *req.MaxVersions)
	})
	if err != nil {
		return err
	}
	rc.au.setDetail("max_versions", strconv.Itoa(m.MaxVersions))
	s.log.Info("secret metadata updated", "secret", rc.name, "max-versions", m.MaxVersions, "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusOK, m)
	return nil
}

func (s *Server) handleDestroySecret(rc *reqCtx) error {
	var req api.DestroySecretRequest
	if err := decode(rc, &req); err != nil {
		return err
	}
	vs := make([]string, 0, len(req.Versions))
	for i, v := range req.Versions {
		if i == 16 {
			vs = append(vs, "…")
			break
		}
		vs = append(vs, strconv.Itoa(v))
	}
	rc.au.setDetail("versions", strings.Join(vs, ","))
	m, err := secretWrite(s, rc, func() (api.SecretMetadata, error) {
		return s.ks.DestroySecretVersions(rc.r.Context(), rc.name, req.Versions)
	})
	if err != nil {
		return err
	}
	s.log.Warn("secret versions destroyed", "secret", rc.name, "versions", strings.Join(vs, ","), "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusOK, m)
	return nil
}

func (s *Server) handleDeleteSecret(rc *reqCtx) error {
	window, err := pendingWindow(rc)
	if err != nil {
		return err
	}
	m, err := secretWrite(s, rc, func() (api.SecretMetadata, error) {
		return s.ks.DeleteSecret(rc.r.Context(), rc.name, window)
	})
	if err != nil {
		return err
	}
	s.log.Warn("secret scheduled for deletion", "secret", rc.name, "deletion-date", m.DeletionDate, "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusAccepted, m)
	return nil
}

func (s *Server) handleRestoreSecret(rc *reqCtx) error {
	m, err := secretWrite(s, rc, func() (api.SecretMetadata, error) {
		return s.ks.RestoreSecret(rc.r.Context(), rc.name)
	})
	if err != nil {
		return err
	}
	s.log.Info("secret deletion cancelled", "secret", rc.name, "uid", rc.caller.UID)
	writeJSON(rc.w, http.StatusOK, m)
	return nil
}

// secretWrite runs a secret write. As for keys (keyWrite), the keystore
// checks it against this node's copy of the state, which may lag on a
// follower: before refusing with an answer that depends on that state
// (not_found, version_conflict, pending_deletion), sync with the leader
// and try once more. A refused write changed nothing, so the retry is safe.
func secretWrite[T any](s *Server, rc *reqCtx, op func() (T, error)) (T, error) {
	v, err := op()
	if (errors.Is(err, keystore.ErrNotFound) || errors.Is(err, keystore.ErrVersionConflict) || errors.Is(err, keystore.ErrSecretPendingDeletion)) &&
		s.node.Sync(rc.r.Context()) == nil {
		return op()
	}
	return v, err
}

// purgeSecrets erases the secrets whose deletion date has passed (run by
// the leader's scheduler).
func (s *Server) purgeSecrets(ctx context.Context, now time.Time) {
	for _, name := range s.ks.DueSecretPurges(now) {
		ok, err := s.ks.PurgeSecret(ctx, name)
		if err != nil {
			s.log.Error("erasing secret failed", "secret", name, "error", err)
		} else if ok {
			s.log.Info("erased secret after its deletion window", "secret", name)
			s.auditEvent(&audit.Entry{Operation: "purge", Key: name, Detail: map[string]string{"reason": "deletion_date", "kind": "secret"}})
		}
	}
}
