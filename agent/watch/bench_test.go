package watch

import (
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// BenchmarkWatcherInitialSync: one watcher's initial sync of a bucket of
// 100,000 keys of 100 B (history 1 and 5), from the consumer's creation to
// the complete, checked view (SyncDone).
//
//	go test -run '^$' -bench WatcherInitialSync -benchtime 5x ./agent
func BenchmarkWatcherInitialSync(b *testing.B) {
	for _, history := range []uint8{1, 5} {
		b.Run(fmt.Sprintf("history%d", history), func(b *testing.B) {
			_, js := syncServer(b)
			bucket := fmt.Sprintf("bench%d", history)
			testutil.CreateBucket(b, js, jetstream.KeyValueConfig{Bucket: bucket, History: history})
			wr := newWriter(b, js, bucket)
			for i := range 100_000 {
				k := fmt.Sprintf("k.%06d", i)
				wr.put(k, value(k, 0, 100))
			}
			wr.flush()
			b.ResetTimer()
			for range b.N {
				logs := &testutil.SyncBuffer{}
				v := startViewer(b, js, bucket, logs)
				defer func() { b.Log(logs.String()) }()
				for {
					if _, ok := v.view(); ok {
						break
					}
					time.Sleep(time.Millisecond)
				}
				v.stop()
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/sync")
		})
	}
}

// BenchmarkWatcherIdle: the cost of idle watchers, with the consumer's idle
// heartbeat at 1 s and at 5 s: 200 watchers of one 100-key bucket on one
// in-process server (client and server in this process), measured over 10 s
// once every watcher is synced: messages the server sent, and the process's
// CPU time (user + system), per watcher and second.
//
//	go test -run '^$' -bench WatcherIdle -benchtime 1x ./agent
func BenchmarkWatcherIdle(b *testing.B) {
	const watchers, window = 200, 10 * time.Second
	for _, hb := range []time.Duration{time.Second, 5 * time.Second} {
		b.Run(fmt.Sprintf("heartbeat%v", hb), func(b *testing.B) {
			s, js := syncServer(b)
			testutil.CreateBucket(b, js, jetstream.KeyValueConfig{Bucket: "idle", History: 5})
			wr := newWriter(b, js, "idle")
			for i := range 100 {
				k := fmt.Sprintf("k.%03d", i)
				wr.put(k, value(k, 0, 100))
			}
			wr.flush()
			for range b.N {
				vs := make([]*viewer, watchers)
				for i := range vs {
					// Watchers share connections by tens, as a fleet's
					// agents share the server's client handling.
					if i%10 == 0 {
						js = connectJS(b, s)
					}
					in := newInbox()
					v := &viewer{w: New(js, "idle", []string{">"}, in, slog.New(slog.DiscardHandler), Options{Mode: ModeConsumer, Heartbeat: hb}), b: newBucketView()}
					runViewer(b, v, in)
					vs[i] = v
				}
				for _, v := range vs {
					for {
						if _, ok := v.view(); ok {
							break
						}
						time.Sleep(time.Millisecond)
					}
				}
				time.Sleep(time.Second) // the last verifications settle
				msgs0, cpu0 := outMsgs(b, s), cpuTime()
				time.Sleep(window)
				msgs, cpu := outMsgs(b, s)-msgs0, cpuTime()-cpu0
				per := float64(watchers) * window.Seconds()
				b.ReportMetric(float64(msgs)/per, "msgs/s/watcher")
				b.ReportMetric(float64(cpu.Microseconds())/per, "cpu-µs/s/watcher")
				for _, v := range vs {
					v.stop()
				}
			}
		})
	}
}

func outMsgs(b *testing.B, s *server.Server) int64 {
	v, err := s.Varz(nil)
	if err != nil {
		b.Fatal(err)
	}
	return v.OutMsgs
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
