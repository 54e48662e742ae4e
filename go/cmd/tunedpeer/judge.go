package main

import (
	"encoding/binary"
	"fmt"
	"math"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	defaultThreshold = 2.0
	defaultWarmup    = 10
	maxNameBytes     = 1024    // streamer's limit on a metric's name
	maxSeries        = 100_000 // streamer's default --max-series: distinct names in a Detect, or in a stream
)

// flags are the flagged rows of one batch, in order, and the statistics each was judged against.
type flags struct {
	idx          []int32
	series       []int32
	value        []float64
	mean, std, z []float64
	sub          []int // each outlier's encoded size
}

func (f *flags) reset() {
	f.idx, f.series, f.value = f.idx[:0], f.series[:0], f.value[:0]
	f.mean, f.std, f.z = f.mean[:0], f.std[:0], f.z[:0]
}

func (f *flags) add(i, s int32, x, mean, std, d float64) {
	f.idx = append(f.idx, i)
	f.series = append(f.series, s)
	f.value = append(f.value, x)
	f.mean = append(f.mean, mean)
	f.std = append(f.std, std)
	f.z = append(f.z, zscore(d, std))
}

// zscore is d / std, +-Inf when std is 0 and 0 for d == 0 (streamer's kernels._zscore).
func zscore(d, std float64) float64 {
	switch {
	case std > 0:
		return d / std
	case d > 0:
		return math.Inf(1)
	case d < 0:
		return math.Inf(-1)
	}
	return 0
}

func finite(x float64) bool { return x-x == 0 }

// threshold is options.threshold or the default, as streamer checks it.
func threshold(r *request, where place) (float64, error) {
	k := r.opts.threshold
	if !finite(k) || k < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "%s: options.threshold must be a finite number >= 0, got %v", where, k)
	}
	if k == 0 {
		k = defaultThreshold
	}
	return k, nil
}

// checkNames refuses a batch with a name over maxNameBytes, before anything is applied.
func checkNames(r *request, where place) error {
	for i, m := range r.metrics {
		if l := m.len; l > maxNameBytes {
			return status.Errorf(codes.InvalidArgument, "%s, metric %d: name is %d bytes, over the limit of %d bytes",
				where, i, l, maxNameBytes)
		}
	}
	return nil
}

// intern gives each metric its series id in t (ids[i]); new names beyond maxSeries refuse the batch and are
// taken back out of the table, so a refused batch changes nothing.
func intern(r *request, b []byte, t *table, ids []int32, where place) ([]int32, error) {
	known := t.len()
	ids = ids[:0]
	for i, m := range r.metrics {
		s, added := t.find(m.hash, b[m.off:m.off+m.len])
		if added && t.len() > maxSeries {
			t.truncate(known)
			return ids, status.Errorf(codes.ResourceExhausted, "%s, metric %d: the series limit of %d series is reached",
				where, i, maxSeries)
		}
		ids = append(ids, s)
	}
	return ids, nil
}

// place names the request in an error message: "batch N" of a stream, or "request" of a Detect call.
type place struct {
	stream bool
	batch  uint64
}

func (p place) String() string {
	if p.stream {
		return fmt.Sprintf("batch %d", p.batch)
	}
	return "request"
}

// batchStats are one Detect call's sums per series.
type batchStats struct {
	count      []int64
	shift, sum []float64 // the first finite value, and the sum of x - shift
	mean, sq   []float64
}

// detect judges one batch alone, as streamer's kernels.detect_batch: per series over its finite values, the
// mean (a shifted sum) then the sum of squared deviations; population stddev; flag |x - mean| > k * std.
func (st *batchStats) detect(ids []int32, metrics []metric, n int, k float64, f *flags) {
	st.count = grow(st.count, n)
	st.shift, st.sum = grow(st.shift, n), grow(st.sum, n)
	st.mean, st.sq = grow(st.mean, n), grow(st.sq, n)
	clear(st.count)
	clear(st.sum)
	clear(st.sq)
	for i := range metrics {
		x := metrics[i].value
		if !finite(x) {
			continue
		}
		s := ids[i]
		if st.count[s] == 0 {
			st.shift[s] = x
		}
		st.count[s]++
		st.sum[s] += x - st.shift[s]
	}
	for s := range n {
		if c := st.count[s]; c > 0 {
			st.mean[s] = st.shift[s] + st.sum[s]/float64(c)
		}
	}
	for i := range metrics {
		if x := metrics[i].value; finite(x) {
			s := ids[i]
			d := x - st.mean[s]
			st.sq[s] += float64(d * d) // the conversion keeps Go from fusing it into an FMA: numba does not
		}
	}
	for s := range n {
		if c := st.count[s]; c > 0 {
			st.sq[s] = math.Sqrt(st.sq[s] / float64(c)) // now the stddev
		}
	}
	for i := range metrics {
		x := metrics[i].value
		if !finite(x) {
			continue
		}
		s := ids[i]
		mean, std := st.mean[s], st.sq[s]
		if d := x - mean; math.Abs(d) > float64(k*std) {
			f.add(int32(i), s, x, mean, std, d)
		}
	}
}

func grow[T any](a []T, n int) []T {
	if cap(a) < n {
		return make([]T, n, 2*n)
	}
	return a[:n]
}

// welford is one series' running count, mean and sum of squared deviations (Welford 1962).
type welford struct {
	n        int64
	mean, m2 float64
	excluded int64 // excluded values in a row since the last value judged normal
}

// stream is one DetectStream call: its rule (from the first message) and each series' state.
type stream struct {
	req     request
	table   *table
	state   []welford
	ids     []int32
	flags   flags
	k       float64
	need    int64
	exclude bool
	batch   uint64
}

// start takes the stream's rule from its first request.
func (s *stream) start(r *request) error {
	if r.session != 0 || r.opts.mode == 2 || r.seq != 0 {
		return status.Error(codes.Unimplemented, "the tuned grpc-go peer keeps no sessions, numbers no batches "+
			"and does only MODE_CUMULATIVE")
	}
	k, err := threshold(r, place{stream: true})
	if err != nil {
		return err
	}
	s.k, s.exclude = k, r.opts.exclude
	s.need = max(int64(r.opts.warmup), 2)
	if r.opts.warmup == 0 {
		s.need = defaultWarmup
	}
	s.table = newTable()
	return nil
}

// process answers one request of the stream: each finite value scored against its series' state before it
// is added (streamer's kernels.welford_update), the answer encoded into a pooled buffer.
func (s *stream) process(b []byte) (mem.BufferSlice, error) {
	where := place{stream: true, batch: s.batch}
	r := &s.req
	if err := r.decode(b); err != nil {
		return nil, statusInvalid(where, err)
	}
	if s.batch == 0 {
		if err := s.start(r); err != nil {
			return nil, err
		}
	}
	if err := checkNames(r, where); err != nil {
		return nil, err
	}
	var err error
	if s.ids, err = intern(r, b, s.table, s.ids, where); err != nil {
		return nil, err
	}
	for len(s.state) < s.table.len() {
		s.state = append(s.state, welford{})
	}
	f := &s.flags
	f.reset()
	k, need, state := s.k, s.need, s.state
	for i := range r.metrics {
		x := r.metrics[i].value
		if !finite(x) {
			continue
		}
		sid := s.ids[i]
		w := &state[sid]
		c, mu := w.n, w.mean
		if c >= need {
			std := math.Sqrt(w.m2 / float64(c))
			if d := x - mu; math.Abs(d) > float64(k*std) {
				f.add(int32(i), sid, x, mu, std, d)
				// streamer's exclusion: never while the stddev is 0, and not after max(warmup, 2) excluded
				// values in a row (its default exclude_limit) until a value is judged normal again
				if s.exclude && std > 0 && w.excluded < need {
					w.excluded++
					continue
				}
			} else {
				w.excluded = 0
			}
		} else {
			w.excluded = 0
		}
		c++
		delta := x - mu
		mu += delta / float64(c)
		w.n, w.mean = c, mu
		w.m2 += float64(delta * (x - mu))
	}
	out := encode(f, s.table, s.batch)
	s.batch++
	return out, nil
}

// encode writes the OutliersResponse as upb and protobuf-go do (fields in number order, zeros omitted, -0.0
// written, indices packed) into a buffer from grpc's pool, which grpc gives back once it is sent.
func encode(f *flags, t *table, batch uint64) mem.BufferSlice {
	packed := 0
	for _, i := range f.idx {
		packed += protowire.SizeVarint(uint64(i))
	}
	size := 0
	if len(f.idx) > 0 {
		size += 1 + protowire.SizeVarint(uint64(packed)) + packed
	}
	f.sub = f.sub[:0]
	for j, i := range f.idx {
		sub := 0
		if i != 0 {
			sub += 1 + protowire.SizeVarint(uint64(i))
		}
		if l := len(t.name(f.series[j])); l > 0 {
			sub += 1 + protowire.SizeVarint(uint64(l)) + l
		}
		sub += doubleSize(f.value[j]) + doubleSize(f.mean[j]) + doubleSize(f.std[j]) + doubleSize(f.z[j])
		f.sub = append(f.sub, sub)
		size += 1 + protowire.SizeVarint(uint64(sub)) + sub
	}
	if batch != 0 {
		size += 1 + protowire.SizeVarint(batch)
	}
	if size == 0 {
		return nil
	}
	pool := mem.DefaultBufferPool()
	p := pool.Get(size)
	out := (*p)[:0]
	if len(f.idx) > 0 {
		out = append(out, 0x0a)
		out = protowire.AppendVarint(out, uint64(packed))
		for _, i := range f.idx {
			out = protowire.AppendVarint(out, uint64(i))
		}
	}
	for j, i := range f.idx {
		out = append(out, 0x12)
		out = protowire.AppendVarint(out, uint64(f.sub[j]))
		if i != 0 {
			out = append(out, 0x08)
			out = protowire.AppendVarint(out, uint64(i))
		}
		if name := t.name(f.series[j]); len(name) > 0 {
			out = append(out, 0x12)
			out = protowire.AppendVarint(out, uint64(len(name)))
			out = append(out, name...)
		}
		out = appendDouble(out, 0x19, f.value[j])
		out = appendDouble(out, 0x21, f.mean[j])
		out = appendDouble(out, 0x29, f.std[j])
		out = appendDouble(out, 0x31, f.z[j])
	}
	if batch != 0 {
		out = append(out, 0x18)
		out = protowire.AppendVarint(out, batch)
	}
	if len(out) != size {
		panic(fmt.Sprintf("tuned peer: encoded %d bytes, sized %d", len(out), size))
	}
	*p = out
	return mem.BufferSlice{mem.NewBuffer(p, pool)}
}

func doubleSize(x float64) int {
	if math.Float64bits(x) == 0 {
		return 0
	}
	return 9
}

func appendDouble(out []byte, tag byte, x float64) []byte {
	if bits := math.Float64bits(x); bits != 0 {
		out = append(out, tag)
		out = binary.LittleEndian.AppendUint64(out, bits)
	}
	return out
}

func statusInvalid(where place, err error) error {
	return status.Errorf(codes.InvalidArgument, "%v: %v", where, err)
}
