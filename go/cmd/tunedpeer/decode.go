package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// request is one OutliersRequest decoded into columns that point into its bytes: reused from request to
// request, so decoding allocates nothing once the columns have grown to the batch size.
type request struct {
	metrics []metric

	hasOptions bool
	opts       options
	session    int // length of the session field (only "is there one" is used)
	seq        uint64
}

// metric is one decoded Metric: its name as a span of the request, the name's hash, its value.
type metric struct {
	off, len int32   // the name is b[off:][:len]
	hash     uint64  // hashUTF8 of the name, for the series table
	value    float64 // 0 when the metric has none
}

// options is DetectOptions, fields 1-5, as the wire gives them (zero: the server's default).
type options struct {
	threshold float64
	warmup    uint32
	mode      int32
	alpha     float64
	exclude   bool
}

// wireError is a request that proto.Unmarshal would refuse, with where the decoder stopped.
type wireError struct {
	what string
	at   int
}

func (e *wireError) Error() string {
	return fmt.Sprintf("malformed OutliersRequest: %s at byte %d", e.what, e.at)
}

// hashSeed keys the name hash for this process, so that a client cannot aim names at one probe chain.
var hashSeed = rand.Uint64()

const hashMul = 0x9E3779B97F4A7C15 // 2^64 / the golden ratio

func mix(h, w uint64) uint64 {
	h = (h ^ w) * hashMul
	return h ^ h>>29
}

// hashUTF8 hashes a name a word at a time and says whether it is UTF-8, in one pass over its words (the
// UTF-8 check proper only runs when a byte has its high bit set: names are mostly ASCII).
func hashUTF8(name []byte) (uint64, bool) {
	h := hashSeed ^ uint64(len(name))*hashMul
	var seen uint64
	b := name
	for len(b) >= 8 {
		w := binary.LittleEndian.Uint64(b)
		seen |= w
		h = mix(h, w)
		b = b[8:]
	}
	if len(b) > 0 {
		var w uint64
		if len(name) >= 8 { // the last 8 bytes, overlapping the words before: one load
			w = binary.LittleEndian.Uint64(name[len(name)-8:])
		} else {
			for i, c := range b {
				w |= uint64(c) << (8 * i)
			}
		}
		seen |= w
		h = mix(h, w)
	}
	if seen&0x8080808080808080 != 0 {
		return h * hashMul, utf8.Valid(name)
	}
	return h * hashMul, true
}

// tag reads a field's tag at b[i:] as protobuf-go does (1- and 2-byte fast paths, then any varint) and checks
// its number; it returns number, wire type and the position after it, or a negative position.
func tag(b []byte, i int) (protowire.Number, protowire.Type, int) {
	var v uint64
	if c := b[i]; c < 0x80 {
		v, i = uint64(c), i+1
	} else if i+1 < len(b) && b[i+1] < 0x80 {
		v, i = uint64(c&0x7f)|uint64(b[i+1])<<7, i+2
	} else {
		x, n := protowire.ConsumeVarint(b[i:])
		if n < 0 {
			return 0, 0, -1
		}
		v, i = x, i+n
	}
	if num := v >> 3; num < uint64(protowire.MinValidNumber) || num > uint64(protowire.MaxValidNumber) {
		return 0, 0, -1
	}
	return protowire.Number(v >> 3), protowire.Type(v & 7), i
}

// varint reads a varint at b[i:] with protowire's rules (at most 10 bytes, the 10th at most 1); -1 on error.
func varint(b []byte, i int) (uint64, int) {
	var x uint64
	for s := uint(0); s < 64; s += 7 {
		if i >= len(b) {
			return 0, -1
		}
		c := b[i]
		i++
		if c < 0x80 {
			if s == 63 && c > 1 {
				return 0, -1
			}
			return x | uint64(c)<<s, i
		}
		x |= uint64(c&0x7f) << s
	}
	return 0, -1
}

// span reads a length prefix at b[i:] and returns the field's start and end within b; end < 0 on error.
func span(b []byte, i int) (int, int) {
	l, j := varint(b, i)
	if j < 0 || l > uint64(len(b)-j) {
		return 0, -1
	}
	return j, j + int(l)
}

// skip passes over an unknown field (or a known one with another wire type), as protobuf-go does.
func skip(b []byte, i int, num protowire.Number, typ protowire.Type) int {
	n := protowire.ConsumeFieldValue(num, typ, b[i:])
	if n < 0 {
		return -1
	}
	return i + n
}

// decode reads an OutliersRequest: it accepts exactly what proto.Unmarshal into pb.OutliersRequest accepts
// (tested against it), and for accepted bytes gives the same fields (later scalars win, repeated options merge).
func (r *request) decode(b []byte) error {
	r.metrics = r.metrics[:0]
	r.hasOptions, r.opts, r.session, r.seq = false, options{}, 0, 0
	for i := 0; i < len(b); {
		at := i
		num, typ, j := tag(b, i)
		if j < 0 {
			return &wireError{"bad field tag", at}
		}
		switch {
		case num == 1 && typ == protowire.BytesType:
			start, end := span(b, j)
			if end < 0 {
				return &wireError{"truncated metric", at}
			}
			if !r.layout(b, start, end) {
				if err := r.metric(b, start, end); err != nil {
					return err
				}
			}
			i = end
		case num == 2 && typ == protowire.BytesType:
			start, end := span(b, j)
			if end < 0 || !r.options(b, start, end) {
				return &wireError{"bad options", at}
			}
			r.hasOptions = true
			i = end
		case num == 3 && typ == protowire.BytesType:
			start, end := span(b, j)
			if end < 0 {
				return &wireError{"truncated session", at}
			}
			if !utf8.Valid(b[start:end]) {
				return &wireError{"session is not UTF-8", at}
			}
			r.session = end - start
			i = end
		case num == 4 && typ == protowire.VarintType:
			if r.seq, i = varint(b, j); i < 0 {
				return &wireError{"truncated seq", at}
			}
		default:
			if i = skip(b, j, num, typ); i < 0 {
				return &wireError{"bad unknown field", at}
			}
		}
	}
	return nil
}

// metric decodes one Metric from b[i:end] and appends it to the columns.
func (r *request) metric(b []byte, i, end int) error {
	m := b[:end]
	nameOff, nameLen, value := i, 0, 0.0
	for i < end {
		at := i
		num, typ, j := tag(m, i)
		if j < 0 {
			return &wireError{"bad field tag in a metric", at}
		}
		switch {
		case num == 2 && typ == protowire.BytesType:
			start, stop := span(m, j)
			if stop < 0 {
				return &wireError{"truncated metric name", at}
			}
			if _, ok := hashUTF8(m[start:stop]); !ok {
				return &wireError{fmt.Sprintf("metric %d: name is not UTF-8", len(r.metrics)), at}
			}
			nameOff, nameLen, i = start, stop-start, stop
		case num == 3 && typ == protowire.Fixed64Type:
			if end-j < 8 {
				return &wireError{"truncated metric value", at}
			}
			value = math.Float64frombits(uint64(m[j]) | uint64(m[j+1])<<8 | uint64(m[j+2])<<16 |
				uint64(m[j+3])<<24 | uint64(m[j+4])<<32 | uint64(m[j+5])<<40 | uint64(m[j+6])<<48 |
				uint64(m[j+7])<<56)
			i = j + 8
		case num == 1 && typ == protowire.BytesType:
			start, stop := span(m, j)
			if stop < 0 || !timestamp(m, start, stop) {
				return &wireError{"bad metric time", at}
			}
			i = stop
		default:
			if i = skip(m, j, num, typ); i < 0 {
				return &wireError{"bad unknown field in a metric", at}
			}
		}
	}
	h, _ := hashUTF8(b[nameOff : nameOff+nameLen])
	r.metrics = append(r.metrics, metric{int32(nameOff), int32(nameLen), h, value})
	return nil
}

// layout decodes the Metric in b[i:end] if it has the layout every encoder writes, [time] name value with
// 1-byte lengths, and says whether it had; metric() reads any other (it accepts all this accepts).
func (r *request) layout(b []byte, i, end int) bool {
	m := b[:end]
	if i+1 < end && m[i] == 0x0a {
		l := int(m[i+1])
		if l >= 0x80 || l > end-i-2 || !timestamp(m, i+2, i+2+l) {
			return false
		}
		i += 2 + l
	}
	if i+1 >= end || m[i] != 0x12 {
		return false
	}
	l := int(m[i+1])
	off := i + 2
	if l >= 0x80 || l > end-off-9 || m[off+l] != 0x19 || off+l+9 != end {
		return false
	}
	h, ok := hashUTF8(m[off : off+l])
	if !ok {
		return false
	}
	r.metrics = append(r.metrics, metric{int32(off), int32(l), h,
		math.Float64frombits(binary.LittleEndian.Uint64(m[off+l+1:]))})
	return true
}

// timestamp checks a google.protobuf.Timestamp in b[i:end] (seconds and nanos varints, anything else unknown);
// its value is carried, not used, as in streamer. b may extend past end (the varints are read a word at a time).
func timestamp(b []byte, i, end int) bool {
	if i < end && b[i] == 0x08 { // the layout every encoder writes: seconds, then nanos
		if i = skipVarint(b, i+1, end); i < 0 {
			return false
		}
	}
	if i < end && b[i] == 0x10 {
		if i = skipVarint(b, i+1, end); i < 0 {
			return false
		}
	}
	t := b[:end]
	for i < end {
		num, typ, j := tag(t, i)
		if j < 0 {
			return false
		}
		if (num == 1 || num == 2) && typ == protowire.VarintType {
			_, i = varint(t, j)
		} else {
			i = skip(t, j, num, typ)
		}
		if i < 0 {
			return false
		}
	}
	return true
}

// skipVarint returns the position after the varint at b[i:end], or -1 if it is not a valid one there: a word
// at a time when 8 bytes can be read (its first byte without the continuation bit ends it), else varint().
func skipVarint(b []byte, i, end int) int {
	if i+8 <= len(b) {
		if stop := ^binary.LittleEndian.Uint64(b[i:]) & 0x8080808080808080; stop != 0 {
			if j := i + bits.TrailingZeros64(stop)/8 + 1; j <= end {
				return j // at most 8 bytes: the 10-byte rule cannot apply
			}
			return -1 // it ends past end: truncated
		}
	}
	_, j := varint(b[:end], i)
	return j
}

// options decodes DetectOptions from b[i:end] into r.opts (merged: a later field wins); false if malformed.
func (r *request) options(b []byte, i, end int) bool {
	o := b[:end]
	for i < end {
		num, typ, j := tag(o, i)
		if j < 0 {
			return false
		}
		var v uint64
		switch {
		case (num == 1 || num == 4) && typ == protowire.Fixed64Type:
			if end-j < 8 {
				return false
			}
			x, _ := protowire.ConsumeFixed64(o[j:])
			if num == 1 {
				r.opts.threshold = math.Float64frombits(x)
			} else {
				r.opts.alpha = math.Float64frombits(x)
			}
			i = j + 8
		case (num == 2 || num == 3 || num == 5) && typ == protowire.VarintType:
			if v, i = varint(o, j); i < 0 {
				return false
			}
			switch num {
			case 2:
				r.opts.warmup = uint32(v)
			case 3:
				r.opts.mode = int32(v)
			default:
				r.opts.exclude = v != 0
			}
		default:
			if i = skip(o, j, num, typ); i < 0 {
				return false
			}
		}
	}
	return true
}
