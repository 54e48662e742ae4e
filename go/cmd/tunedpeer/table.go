package main

import "bytes"

// table maps series names to dense ids 0..n-1: open addressing with linear probing over a power-of-two slot
// array (at most half full), each slot the id + 1 (0: empty); names are copied into one arena.
type table struct {
	slots  []int32
	mask   uint64
	hashes []uint64
	off    []int32 // series s's name is arena[off[s]:off[s+1]]
	arena  []byte
	where  []int32 // the slot of each series, so that reset clears only those
}

func newTable() *table {
	t := &table{}
	t.resize(64)
	t.off = append(t.off[:0], 0)
	return t
}

func (t *table) len() int { return len(t.hashes) }

func (t *table) name(s int32) []byte { return t.arena[t.off[s]:t.off[s+1]] }

// find returns the id of name (hash h), adding it when new; added says whether it was.
func (t *table) find(h uint64, name []byte) (id int32, added bool) {
	i := h & t.mask
	for {
		v := t.slots[i]
		if v == 0 {
			break
		}
		s := v - 1
		if t.hashes[s] == h && bytes.Equal(t.name(s), name) {
			return s, false
		}
		i = (i + 1) & t.mask
	}
	s := int32(len(t.hashes))
	t.slots[i] = s + 1
	t.where = append(t.where, int32(i))
	t.hashes = append(t.hashes, h)
	t.arena = append(t.arena, name...)
	t.off = append(t.off, int32(len(t.arena)))
	if 2*len(t.hashes) > len(t.slots) {
		t.resize(2 * len(t.slots))
	}
	return s, true
}

// truncate forgets the series from id n on (a request refused half way through its new names).
func (t *table) truncate(n int) {
	for _, i := range t.where[n:] {
		t.slots[i] = 0
	}
	t.where, t.hashes, t.off = t.where[:n], t.hashes[:n], t.off[:n+1]
	t.arena = t.arena[:t.off[n]]
}

func (t *table) resize(size int) {
	t.slots = make([]int32, size)
	t.mask = uint64(size - 1)
	for s, h := range t.hashes {
		i := h & t.mask
		for t.slots[i] != 0 {
			i = (i + 1) & t.mask
		}
		t.slots[i] = int32(s) + 1
		t.where[s] = int32(i)
	}
}
