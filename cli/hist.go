package cli

import "math/bits"

// histogram records latencies (nanoseconds) in HDR-style log-linear
// buckets: every power of two is split into histSub equal buckets, so a
// bucket is at most 1/128 of its values wide, and reporting its midpoint
// errs by at most 0.4 %. Values below 2*histSub are exact. It costs a fixed
// 58 KiB, one per bench worker, merged at the end; no locks on the hot path.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    uint64
	max    uint64
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits
	// Buckets 0..2*histSub-1 hold values exactly; each further power of two
	// up to 2^64 adds histSub buckets.
	histBuckets = (64 - histSubBits + 1) * histSub
)

func bucketIndex(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1
	return (shift+1)*histSub + int(v>>shift) - histSub
}

// bucketMid returns the midpoint of bucket i (its exact value below
// 2*histSub).
func bucketMid(i int) uint64 {
	if i < 2*histSub {
		return uint64(i)
	}
	shift := i/histSub - 1
	low := uint64(i%histSub+histSub) << shift
	return low + (uint64(1)<<shift)/2
}

func (h *histogram) record(v uint64) {
	h.counts[bucketIndex(v)]++
	h.n++
	h.sum += v
	h.max = max(h.max, v)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// quantile returns the value at quantile q (0 < q <= 1): the midpoint of
// the bucket that holds the ceil(q*n)-th smallest value, capped at the
// exact maximum. It returns 0 for an empty histogram.
func (h *histogram) quantile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	if float64(rank) < q*float64(h.n) {
		rank++
	}
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(bucketMid(i), h.max)
		}
	}
	return h.max
}

func (h *histogram) mean() float64 {
	if h.n == 0 {
		return 0
	}
	return float64(h.sum) / float64(h.n)
}
