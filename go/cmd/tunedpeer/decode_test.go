// The decoder accepts exactly what proto.Unmarshal accepts, and reads the same fields from it.

package main

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamer-dev/streamer/go/pb"
)

// sample is a valid request with every field and some unknown ones (a varint, a fixed32, a group, bytes)
// at each level, seeded.
func sample(rng *rand.Rand) []byte {
	req := &pb.OutliersRequest{Session: []string{"", "s", "sessión"}[rng.IntN(3)], Seq: uint64(rng.IntN(3))}
	if rng.IntN(2) == 0 {
		req.Options = &pb.DetectOptions{Threshold: rng.Float64() * 3, Warmup: uint32(rng.IntN(20)),
			Mode: pb.Mode(rng.IntN(3)), Alpha: rng.Float64(), ExcludeOutliers: rng.IntN(2) == 0}
	}
	for i := range rng.IntN(6) {
		m := &pb.Metric{Name: []string{"", "a", "cpu.load", "ü€"}[rng.IntN(4)], Value: rng.NormFloat64()}
		if i%2 == 0 {
			m.Time = timestamppb.New(time.Unix(rng.Int64N(1<<40)-(1<<39), int64(rng.IntN(1e9))))
		}
		req.Metrics = append(req.Metrics, m)
	}
	b, err := proto.Marshal(req)
	if err != nil {
		panic(err)
	}
	if rng.IntN(3) == 0 { // unknown fields at the top: a varint, a fixed32, a group holding a varint, bytes
		b = protowire.AppendTag(b, 9, protowire.VarintType)
		b = protowire.AppendVarint(b, rng.Uint64())
		b = protowire.AppendTag(b, 10, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, rng.Uint32())
		b = protowire.AppendTag(b, 11, protowire.StartGroupType)
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, 5)
		b = protowire.AppendTag(b, 11, protowire.EndGroupType)
		b = protowire.AppendTag(b, 1, protowire.VarintType) // metrics with another wire type: unknown
		b = protowire.AppendVarint(b, 7)
	}
	return b
}

// agree decodes b both ways and fails unless both refuse it or both accept it with the same fields.
func agree(t testing.TB, b []byte) bool {
	t.Helper()
	var want pb.OutliersRequest
	wantErr := proto.Unmarshal(b, &want)
	var r request
	err := r.decode(b)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("% x: proto.Unmarshal says %v, the tuned decoder %v", b, wantErr, err)
	}
	if err != nil {
		return false
	}
	if len(r.metrics) != len(want.Metrics) {
		t.Fatalf("% x: %d metrics, proto.Unmarshal %d", b, len(r.metrics), len(want.Metrics))
	}
	for i, m := range want.Metrics {
		got := r.metrics[i]
		name := string(b[got.off : got.off+got.len])
		if name != m.Name || math.Float64bits(got.value) != math.Float64bits(m.Value) {
			t.Fatalf("% x: metric %d is %q %v, proto.Unmarshal %q %v", b, i, name, got.value, m.Name, m.Value)
		}
	}
	o := want.Options
	if r.hasOptions != (o != nil) || r.session != len(want.Session) || r.seq != want.Seq ||
		math.Float64bits(r.opts.threshold) != math.Float64bits(o.GetThreshold()) || r.opts.warmup != o.GetWarmup() ||
		r.opts.mode != int32(o.GetMode()) || math.Float64bits(r.opts.alpha) != math.Float64bits(o.GetAlpha()) ||
		r.opts.exclude != o.GetExcludeOutliers() {
		t.Fatalf("% x: options %v %+v, session %d, seq %d; proto.Unmarshal %v, %q, %d", b, r.hasOptions, r.opts,
			r.session, r.seq, o, want.Session, want.Seq)
	}
	return true
}

func TestDecoderAgreesWithProtoUnmarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 1))
	accepted, refused := 0, 0
	count := func(ok bool) {
		if ok {
			accepted++
		} else {
			refused++
		}
	}
	for range 300 {
		b := sample(rng)
		count(agree(t, b))
		for n := range len(b) { // every truncation
			count(agree(t, b[:n]))
		}
		for range 20 { // random corruptions: a byte set, a bit flipped, bytes inserted or removed
			c := append([]byte{}, b...)
			for range 1 + rng.IntN(3) {
				if len(c) == 0 {
					break
				}
				i := rng.IntN(len(c))
				switch rng.IntN(4) {
				case 0:
					c[i] = byte(rng.IntN(256))
				case 1:
					c[i] ^= 1 << rng.IntN(8)
				case 2:
					c = append(c[:i], append([]byte{byte(rng.IntN(256))}, c[i:]...)...)
				default:
					c = append(c[:i], c[i+1:]...)
				}
			}
			count(agree(t, c))
		}
	}
	// edge cases: overlong varints, field number 0 and 2^29, wire types 6 and 7, an end group at the top,
	// a group closed by another number, a 10-byte varint overflowing, invalid UTF-8 in a session
	for _, b := range [][]byte{
		{0x20, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
		{0x20, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02},
		{0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
		{0x00, 0x01}, {0x80, 0x80, 0x80, 0x80, 0x10, 0x01}, {0xf8, 0xff, 0xff, 0xff, 0x0f, 0x01},
		{0x0e}, {0x0f}, {0x0c}, {0x5b, 0x64}, {0x5b, 0x5c}, {0x5b, 0x08, 0x01, 0x5c},
		{0x1a, 0x02, 0xed, 0xa0}, {0x1a, 0x01, 0xff}, {0x0a, 0x00}, {0x0a, 0x03, 0x1a, 0x01, 0x00},
		{0x12, 0x02, 0x08, 0x80}, {0x12, 0x02, 0x09, 0x00}, {0x0a, 0x02, 0x0a, 0x00},
	} {
		count(agree(t, b))
	}
	if accepted < 1000 || refused < 1000 {
		t.Fatalf("%d accepted, %d refused: the corpus tests too little of one side", accepted, refused)
	}
	t.Logf("%d accepted and %d refused by both", accepted, refused)
}

// FuzzDecode: `go test -fuzz FuzzDecode ./cmd/tunedpeer` explores further; `go test` runs the seeds.
func FuzzDecode(f *testing.F) {
	rng := rand.New(rand.NewPCG(7, 7))
	for range 16 {
		f.Add(sample(rng))
	}
	f.Add(loadgenFrame(3, 2))
	f.Add([]byte{0x5b, 0x08, 0x01, 0x5c})
	f.Fuzz(func(t *testing.T, b []byte) { agree(t, b) })
}
