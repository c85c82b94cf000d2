package seal

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/coffer-kms/coffer/hsm"
	"github.com/coffer-kms/coffer/internal/atomicfile"
)

// The device-sealed root key is node-local (never replicated): a JSON file
// in data_dir that only this node's device can open.

func (m *Manager) blobPath() string { return filepath.Join(m.cfg.DataDir, "seal-blob.json") }

type blobFile struct {
	ClusterID string   `json:"cluster_id"`
	NodeID    string   `json:"node_id"`
	Blob      hsm.Blob `json:"blob"`
}

func sealAAD(clusterID, nodeID string) []byte { return hsm.SealAAD(clusterID, nodeID) }

// readBlob reads and decodes the node's blob file.
func (m *Manager) readBlob() (blobFile, error) {
	var bf blobFile
	data, err := os.ReadFile(m.blobPath())
	if err != nil {
		return bf, err
	}
	err = json.Unmarshal(data, &bf)
	return bf, err
}

// sealWithDevice wraps root with this node's device and stores the blob.
func (m *Manager) sealWithDevice(ctx context.Context, clusterID string, root []byte) error {
	return m.sealWithDeviceTo(ctx, m.blobPath(), clusterID, root)
}

// sealWithDeviceTo is sealWithDevice writing the blob to path.
func (m *Manager) sealWithDeviceTo(ctx context.Context, path, clusterID string, root []byte) error {
	dev, err := m.dev.get(ctx)
	if err != nil {
		return fmt.Errorf("opening the %s seal device: %w", m.dev.kind, err)
	}
	return m.sealWithTo(ctx, dev, path, clusterID, root)
}

// sealWith wraps root with dev and stores the blob, replacing the old one.
func (m *Manager) sealWith(ctx context.Context, dev hsm.Device, clusterID string, root []byte) error {
	return m.sealWithTo(ctx, dev, m.blobPath(), clusterID, root)
}

func (m *Manager) sealWithTo(ctx context.Context, dev hsm.Device, path, clusterID string, root []byte) error {
	b, err := dev.Seal(ctx, root, sealAAD(clusterID, m.cfg.NodeID))
	if err != nil {
		return fmt.Errorf("sealing the root key with the %s device: %w", m.dev.kind, err)
	}
	data, err := json.Marshal(blobFile{ClusterID: clusterID, NodeID: m.cfg.NodeID, Blob: b})
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}
