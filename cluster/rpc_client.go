package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"time"
)

// The client side of the node-to-node RPC: mutual-TLS calls to peers.

// dialError: a call that failed before a connection to the peer was made,
// so the peer never saw the request (safe to send again).
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }

func (e *dialError) Unwrap() error { return e.err }

func notSent(err error) bool {
	var de *dialError
	return errors.As(err, &de)
}

// rpcClient calls peers over mutual TLS.
func (n *Node) rpcClient() *http.Client {
	n.rpcOnce.Do(func() {
		client := n.cfg.Net.ClientTLS
		// The URL says http: the dialer makes the mutual-TLS connection
		// itself and hands net/http a plain stream (see plainConn).
		n.rpcHTTP = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				if _, ok := ctx.Deadline(); !ok {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
					defer cancel()
				}
				c, err := dialTLSContext(ctx, addr, alpnRPC, client)
				if err != nil {
					return nil, &dialError{err}
				}
				n.noteDialed(c)
				return plainConn{c}, nil
			},
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     time.Minute,
		}}
	})
	return n.rpcHTTP
}

func (n *Node) call(ctx context.Context, addr, path string, body []byte) (*applyResponse, int, error) {
	return n.callHeader(ctx, addr, path, body)
}

// callPeer is call with the given headers set to "1"; it also returns who
// answered: the node its verified certificate names.
func (n *Node) callPeer(ctx context.Context, addr, path string, body []byte, headers ...string) (*applyResponse, int, peerInfo, error) {
	var peer peerInfo
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if pc, ok := info.Conn.(plainConn); ok {
			if tc, ok := pc.Conn.(*tls.Conn); ok {
				peer, _ = peerOf(tc.ConnectionState())
			}
		}
	}})
	out, status, err := n.callHeader(ctx, addr, path, body, headers...)
	return out, status, peer, err
}

// callHeader is call with the given headers set to "1".
func (n *Node) callHeader(ctx context.Context, addr, path string, body []byte, headers ...string) (*applyResponse, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	for _, h := range headers {
		req.Header.Set(h, "1")
	}
	setOrigin(ctx, req)
	resp, err := n.rpcClient().Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	var out applyResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return nil, resp.StatusCode, fmt.Errorf("bad answer from %s: %w", addr, err)
	}
	return &out, resp.StatusCode, nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
