package kmsv2

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	kmsapi "k8s.io/kms/apis/v2"
)

// zeroingCodec is gRPC's proto codec that, once a DecryptResponse is
// marshalled, zeroes its plaintext: the handler cannot, because gRPC
// marshals the answer after the handler returns. (The marshalled copy lives
// in gRPC's pooled buffers; zeroing is best effort, as everywhere in Go.)
type zeroingCodec struct{}

var protoCodec = encoding.GetCodecV2(proto.Name)

func (zeroingCodec) Marshal(v any) (mem.BufferSlice, error) {
	out, err := protoCodec.Marshal(v)
	if r, ok := v.(*kmsapi.DecryptResponse); ok {
		clear(r.Plaintext)
	}
	return out, err
}

func (zeroingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return protoCodec.Unmarshal(data, v)
}

func (zeroingCodec) Name() string { return proto.Name }
