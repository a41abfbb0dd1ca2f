package prefetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/loaderd/loaderd/shard"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memSource serves blocks of an "id" column (global row ids in file order)
// and a "name" string column; blocks listed in bad fail as bad input.
type memSource struct {
	rows []int64
	base []int64
	bad  map[int]bool
	sc   *arrow.Schema
}

func newMemSource(rows []int64, bad ...int) *memSource {
	s := &memSource{rows: rows, base: make([]int64, len(rows)+1), bad: map[int]bool{},
		sc: arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}, {Name: "name", Type: arrow.BinaryTypes.String}}, nil)}
	for i, n := range rows {
		s.base[i+1] = s.base[i] + n
	}
	for _, b := range bad {
		s.bad[b] = true
	}
	return s
}

func (s *memSource) Schema() *arrow.Schema { return s.sc }

// BlockBytes: as if stored as 8 bytes a row (decoding takes about twice that).
func (s *memSource) BlockBytes(b int) int64 { return s.rows[b] * 8 }

func (s *memSource) ReadBlock(_ context.Context, b int, mem memory.Allocator) (arrow.RecordBatch, error) {
	if s.bad[b] {
		return nil, shard.BadInput(fmt.Sprintf("mem://block%d", b), "row group 0", errors.New("corrupt"))
	}
	ids := array.NewInt64Builder(mem)
	names := array.NewStringBuilder(mem)
	defer ids.Release()
	defer names.Release()
	for i := s.base[b]; i < s.base[b+1]; i++ {
		ids.Append(i)
		names.Append(fmt.Sprintf("row-%d", i))
	}
	a, n := ids.NewArray(), names.NewArray()
	defer a.Release()
	defer n.Release()
	return array.NewRecordBatch(s.sc, []arrow.Array{a, n}, s.rows[b]), nil
}

type delivered struct {
	ids     []int64
	batches []*Batch // records released; metadata kept
}

func drain(t *testing.T, src *memSource, rp *shard.RankPlan, from int64, opts Options) (delivered, error) {
	t.Helper()
	s, err := Start(context.Background(), src, rp, from, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var d delivered
	for {
		b, err := s.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return d, nil
		}
		if err != nil {
			return d, err
		}
		col := b.Record.Column(0).(*array.Int64)
		names := b.Record.Column(1).(*array.String)
		for i := 0; i < col.Len(); i++ {
			if names.Value(i) != fmt.Sprintf("row-%d", col.Value(i)) {
				t.Fatalf("row %d: columns disagree: %d vs %q", i, col.Value(i), names.Value(i))
			}
		}
		d.ids = append(d.ids, col.Int64Values()...)
		b.Record.Release()
		b.Record = nil
		d.batches = append(d.batches, b)
	}
}

func TestStreamExactlyOnceAndResume(t *testing.T) {
	layouts := [][]int64{{}, {1}, {0, 5, 0, 3}, {100, 7, 250, 1, 40}, slices.Repeat([]int64{33}, 20)}
	for li, rows := range layouts {
		for _, world := range []int{1, 3, 8} {
			for _, sh := range []*shard.Shuffle{nil, {Seed: 9, WindowRows: 50}} {
				for _, bs := range []int{1, 7, 64} {
					t.Run(fmt.Sprintf("layout%d/w%d/shuffle=%v/bs%d", li, world, sh != nil, bs), func(t *testing.T) {
						mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
						defer mem.AssertSize(t, 0)
						src := newMemSource(rows)
						plan, err := shard.NewEpochPlan(rows, sh, 2, world, shard.Exact)
						if err != nil {
							t.Fatal(err)
						}
						opts := Options{BatchSize: bs, Pool: NewPool(3), Mem: mem, ReadAhead: 2}
						var all []int64
						for r := 0; r < world; r++ {
							rp, _ := plan.Rank(r)
							d, err := drain(t, src, rp, 0, opts)
							if err != nil {
								t.Fatal(err)
							}
							if int64(len(d.ids)) != rp.Len() {
								t.Fatalf("rank %d: %d rows, plan says %d", r, len(d.ids), rp.Len())
							}
							for i, b := range d.batches {
								n := b.Next - b.First
								if (i < len(d.batches)-1 && n != int64(bs)) || n > int64(bs) || b.Seq != int64(i) {
									t.Fatalf("batch %d: %+v", i, b)
								}
								// Resuming at a batch boundary yields exactly the rest
								// (a spread of boundaries, first and last included).
								if step := max(1, len(d.batches)/5); i%step != 0 && i != len(d.batches)-1 {
									continue
								}
								rest, err := drain(t, src, rp, b.First, opts)
								if err != nil {
									t.Fatal(err)
								}
								if !slices.Equal(rest.ids, d.ids[b.First:]) {
									t.Fatalf("resume at %d: got %v, want %v", b.First, rest.ids, d.ids[b.First:])
								}
							}
							all = append(all, d.ids...)
						}
						slices.Sort(all)
						for i, id := range all {
							if id != int64(i) {
								t.Fatalf("ids not exactly once: %v", all)
							}
						}
					})
				}
			}
		}
	}
}

func TestStreamEvenPaddingAndDropLast(t *testing.T) {
	rows := []int64{10, 3}
	plan, _ := shard.NewEpochPlan(rows, nil, 0, 4, shard.Even) // 13 rows, 4 each, 3 padding
	rp, _ := plan.Rank(3)
	d, err := drain(t, newMemSource(rows), rp, 0, Options{BatchSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.ids, []int64{12, 0, 1, 2}) || d.batches[1].Padding != 1 || d.batches[0].Padding != 2 {
		t.Fatalf("padding: ids %v, batches %+v %+v", d.ids, *d.batches[0], *d.batches[1])
	}
	d, _ = drain(t, newMemSource(rows), rp, 0, Options{BatchSize: 3, DropLast: true})
	if len(d.batches) != 1 || len(d.ids) != 3 {
		t.Fatalf("drop_last: %v", d.ids)
	}
}

func TestStreamBadBlock(t *testing.T) {
	rows := []int64{5, 5, 5, 5}
	plan, _ := shard.NewEpochPlan(rows, &shard.Shuffle{Seed: 1, WindowRows: 8}, 0, 1, shard.Exact)
	rp, _ := plan.Rank(0)
	_, err := drain(t, newMemSource(rows, 2), rp, 0, Options{BatchSize: 4})
	var ie *shard.InputError
	if !errors.As(err, &ie) || ie.File != "mem://block2" {
		t.Fatalf("raise: %v", err)
	}
	d, err := drain(t, newMemSource(rows, 2), rp, 0, Options{BatchSize: 4, OnError: shard.Skip})
	if err != nil {
		t.Fatal(err)
	}
	got := slices.Sorted(slices.Values(d.ids))
	want := []int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 18, 19}
	if !slices.Equal(got, want) {
		t.Fatalf("skip: %v", got)
	}
	last := d.batches[len(d.batches)-1]
	if last.Next != 20 && d.batches[len(d.batches)-1].Next > 20 {
		t.Fatalf("last batch ends at %d", last.Next)
	}
}

func TestStreamErrorReleasesEverything(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	rows := []int64{5, 5, 5, 5, 5, 5}
	plan, _ := shard.NewEpochPlan(rows, nil, 0, 1, shard.Exact)
	rp, _ := plan.Rank(0)
	// Block 4 fails inside a window that also holds good blocks 3 and 5.
	_, err := drain(t, newMemSource(rows, 4), rp, 0, Options{BatchSize: 4, Mem: mem, ReadAhead: 3, Pool: NewPool(2)})
	if err == nil {
		t.Fatal("no error")
	}
}

func TestStreamCloseEarlyReleasesEverything(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	rows := slices.Repeat([]int64{1000}, 50)
	plan, _ := shard.NewEpochPlan(rows, &shard.Shuffle{Seed: 3}, 0, 1, shard.Exact)
	rp, _ := plan.Rank(0)
	s, err := Start(context.Background(), newMemSource(rows), rp, 0, Options{BatchSize: 100, Mem: mem, Pool: NewPool(2)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Next(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b.Record.Release()
	s.Close()
	mem.AssertSize(t, 0)
}
