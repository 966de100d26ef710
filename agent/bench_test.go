package agent

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvsync/kvsync/agent/watch"
)

// benchOwner builds an owner for cfg with no NATS connection: the benchmarks
// feed it events the way the watchers do.
func benchOwner(b *testing.B, cfg *Config) *owner {
	b.Helper()
	cfg.Default()
	a, err := New(cfg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	o, err := newOwner(cfg, a, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(o.closeAll)
	return o
}

// syncBucket sends the initial sync of bucket with n keys k.000000... and
// flushes, as a watcher's first epoch would.
func syncBucket(b *testing.B, o *owner, bucket string, n int) {
	b.Helper()
	o.handle(fromWatch(watch.EpochStart{Bucket: bucket, Epoch: 1}))
	now := time.Now()
	for i := 0; i < n; i++ {
		o.handle(fromWatch(&watch.Entry{Bucket: bucket, Key: fmt.Sprintf("k.%06d", i), Op: OpPut, Value: []byte("init"), Revision: uint64(i + 1), Created: now}))
	}
	o.handle(fromWatch(watch.SyncDone{Bucket: bucket, Epoch: 1}))
	if _, err := o.flush(); err != nil {
		b.Fatal(err)
	}
}

func benchFilesConfig(dir string, fsync bool) *Config {
	cfg := Default()
	cfg.HTTP.Listen = ""
	cfg.Files = []FilesConfig{{Name: "files", Bucket: "b", Dir: dir, Fsync: &fsync}}
	return &cfg
}

// BenchmarkOwnerHandle is one put through the owner: the event is applied to
// the state, the files projection marked dirty and flushed, which writes the
// file through projector.Dir.Apply. Each op changes the file's bytes.
func BenchmarkOwnerHandle(b *testing.B) {
	for _, fsync := range []bool{false, true} {
		b.Run(fmt.Sprintf("fsync=%v", fsync), func(b *testing.B) {
			o := benchOwner(b, benchFilesConfig(b.TempDir(), fsync))
			syncBucket(b, o, "b", 100)
			vals := [][]byte{[]byte("value one"), []byte("value two")}
			rev := uint64(1000)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				rev++
				o.handle(fromWatch(&watch.Entry{Bucket: "b", Key: fmt.Sprintf("k.%06d", i%100), Op: OpPut, Value: vals[(i/100)%2], Revision: rev, Created: time.Now()}))
				if _, err := o.flush(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOwnerTemplate is one put of a key a template ranges over: the
// owner re-renders the template over every key and writes it (fsync on, as
// templates always are).
func BenchmarkOwnerTemplate(b *testing.B) {
	for _, n := range []int{1_000, 10_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			cfg := Default()
			cfg.HTTP.Listen = ""
			cfg.Templates = []TemplateConfig{{
				Name: "t", Bucket: "b", Dest: filepath.Join(b.TempDir(), "out.conf"),
				Text: "{{ range keys \"k.>\" }}{{ .Key }}={{ .Value }}\n{{ end }}",
			}}
			o := benchOwner(b, &cfg)
			syncBucket(b, o, "b", n)
			rev := uint64(n + 1)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				rev++
				o.handle(fromWatch(&watch.Entry{Bucket: "b", Key: fmt.Sprintf("k.%06d", (i*7919)%n), Op: OpPut, Value: []byte(fmt.Sprint(i)), Revision: rev, Created: time.Now()}))
				if _, err := o.flush(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOwnerInitialSync is the first sync of 10,000 keys into an empty
// folder without fsync: events into the view being built, the swap, and the
// complete update of the files projection (Reconcile).
func BenchmarkOwnerInitialSync(b *testing.B) {
	const n = 10_000
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		o := benchOwner(b, benchFilesConfig(b.TempDir(), false))
		b.StartTimer()
		syncBucket(b, o, "b", n)
		if got, want := o.projs[0].meta().status.Keys, n; got != want {
			b.Fatalf("keys projected=%d, want %d", got, want)
		}
	}
}

// BenchmarkStateList is what `keys "k.>"` costs a template: a filtered,
// sorted listing of a 10,000-key bucket, and a literal filter for contrast.
func BenchmarkStateList(b *testing.B) {
	st := newState(nil)
	bs := st.bucket("b")
	for i := 0; i < 10_000; i++ {
		bs.apply(&watch.Entry{Bucket: "b", Key: fmt.Sprintf("k.%06d", i), Op: OpPut, Value: []byte("v"), Revision: uint64(i + 1)})
	}
	bs.synced = true
	for _, filter := range []string{"k.>", "k.004242"} {
		b.Run(filter, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if len(st.List("b", filter)) == 0 {
					b.Fatal("empty listing")
				}
			}
		})
	}
}

// BenchmarkInbox is a watcher handing one event to the owner.
func BenchmarkInbox(b *testing.B) {
	q := newInbox()
	var buf []ownerEvent
	ev := watch.Entry{Bucket: "b", Key: "k", Value: []byte("v")}
	sink := inboxSink{q}
	b.ReportAllocs()
	for b.Loop() {
		e := ev // a watcher hands on a new entry each time
		sink.Push(&e)
		<-q.ready
		buf = q.take(buf)
	}
}
