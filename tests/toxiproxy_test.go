package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kvsync/kvsync/internal/testutil"
)

// Network faults between the agent and its server, injected by toxiproxy
// running in the test process on loopback ports. The test's own connection
// goes straight to the server, so changes keep coming during the fault; after
// the fault is removed the files must equal the bucket exactly.

// faultProxy is a toxiproxy proxy in front of a NATS server.
type faultProxy struct {
	p *toxiproxy.Proxy
}

// startFaultProxy proxies a free loopback port to upstream (host:port).
func startFaultProxy(t testing.TB, upstream string) *faultProxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "nats", "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("start toxiproxy: %v", err)
	}
	t.Cleanup(p.Stop)
	return &faultProxy{p: p}
}

func (f *faultProxy) url() string { return "nats://" + f.p.Listen }

// add adds a toxic of typ on stream ("upstream": agent to server,
// "downstream": server to agent).
func (f *faultProxy) add(t testing.TB, name, typ, stream string, attrs map[string]any) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"name": name, "type": typ, "stream": stream, "attributes": attrs})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.Toxics.AddToxicJson(strings.NewReader(string(b))); err != nil {
		t.Fatalf("add toxic %s: %v", name, err)
	}
}

func (f *faultProxy) remove(t testing.TB, name string) {
	t.Helper()
	if err := f.p.Toxics.RemoveToxic(context.Background(), name); err != nil {
		t.Fatalf("remove toxic %s: %v", name, err)
	}
}

// faultSetup starts a server, a bucket with history, a proxy and an agent that
// projects the bucket through the proxy, ready.
func faultSetup(t *testing.T, extra ...string) (jetstream.KeyValue, *faultProxy, *agentProc, string) {
	t.Helper()
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 5)
	for i := range 50 {
		if _, err := kv.Put(context.Background(), fmt.Sprintf("k.%02d", i), []byte(fmt.Sprint("v0-", i))); err != nil {
			t.Fatal(err)
		}
	}
	fp := startFaultProxy(t, strings.TrimPrefix(s.ClientURL(), "nats://"))
	dir := t.TempDir()
	a := startAgent(t, fp.url(), fmt.Sprintf("files:\n  - {name: app, bucket: app, dir: %q, fsync: false}\n", dir)+strings.Join(extra, ""))
	t.Cleanup(func() {
		if t.Failed() {
			_, st, _ := a.get("/status")
			t.Logf("agent /status:\n%s\nagent log:\n%s", st, a.stderr.String())
		}
	})
	a.waitReady(t, 20*time.Second)
	converges(t, 10*time.Second, kv, dir)
	return kv, fp, a, dir
}

// changes puts, deletes and purges keys of kv: round r of a fault.
func changes(t testing.TB, kv jetstream.KeyValue, r int) {
	t.Helper()
	ctx := context.Background()
	for i := range 50 {
		k := fmt.Sprintf("k.%02d", i)
		var err error
		switch (i + r) % 7 {
		case 0:
			err = kv.Delete(ctx, k)
		case 1:
			err = kv.Purge(ctx, k)
		default:
			_, err = kv.Put(ctx, k, fmt.Appendf(nil, "v%d-%d", r, i))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kv.Put(ctx, fmt.Sprintf("new.%d", r), []byte("added during the fault")); err != nil {
		t.Fatal(err)
	}
}

// TestToxiLatency: 150 ms each way, with jitter: every change arrives.
func TestToxiLatency(t *testing.T) {
	kv, fp, a, dir := faultSetup(t)
	fp.add(t, "lat-down", "latency", "downstream", map[string]any{"latency": 150, "jitter": 50})
	fp.add(t, "lat-up", "latency", "upstream", map[string]any{"latency": 150, "jitter": 50})
	changes(t, kv, 1)
	converges(t, 15*time.Second, kv, dir)
	fp.remove(t, "lat-down")
	fp.remove(t, "lat-up")
	changes(t, kv, 2)
	converges(t, 10*time.Second, kv, dir)
	a.alive(t)
}

// TestToxiBlackhole: the link drops everything, both ways, with no reset.
// /status says the agent is blind within seconds (stale, then
// disconnected); once the link is back the files equal the bucket.
func TestToxiBlackhole(t *testing.T) {
	kv, fp, a, dir := faultSetup(t)
	fp.add(t, "hole-down", "timeout", "downstream", map[string]any{"timeout": 0})
	fp.add(t, "hole-up", "timeout", "upstream", map[string]any{"timeout": 0})
	cut := time.Now()
	changes(t, kv, 1)
	testutil.CheckFor(t, 10*time.Second, func() error {
		if st := a.permStatus(t); st.Connection.State != "stale" {
			return fmt.Errorf("connection state %q, want stale", st.Connection.State)
		}
		return nil
	})
	stale := time.Since(cut)
	if got := a.metric(t, "kvsync_nats_link_stale"); got != 1 {
		t.Fatalf("kvsync_nats_link_stale = %v while stale", got)
	}
	// The pings give the connection up.
	testutil.CheckFor(t, 15*time.Second, func() error {
		if st := a.permStatus(t); st.Connection.State != "disconnected" {
			return fmt.Errorf("connection state %q, want disconnected", st.Connection.State)
		}
		return nil
	})
	t.Logf("stale after %v, disconnected after %v", stale.Round(10*time.Millisecond), time.Since(cut).Round(10*time.Millisecond))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if got := a.metric(t, "kvsync_nats_link_stale"); got != 0 {
			return fmt.Errorf("kvsync_nats_link_stale = %v once disconnected (kvsync_connected says it)", got)
		}
		return nil
	})
	changes(t, kv, 2)
	fp.remove(t, "hole-down")
	fp.remove(t, "hole-up")
	converges(t, 20*time.Second, kv, dir)
	testutil.CheckFor(t, 10*time.Second, func() error {
		if st := a.permStatus(t); st.Connection.State != "connected" {
			return fmt.Errorf("connection state %q, want connected", st.Connection.State)
		}
		return nil
	})
	if logs := a.stderr.String(); !strings.Contains(logs, "NATS link stale") {
		t.Fatalf("no stale warning in the log:\n%s", logs)
	}
}

// TestToxiResetPeer: every connection is reset while the toxic is on; the
// agent keeps re-dialling and catches up once it is off.
func TestToxiResetPeer(t *testing.T) {
	kv, fp, a, dir := faultSetup(t)
	fp.add(t, "reset", "reset_peer", "downstream", map[string]any{"timeout": 0})
	changes(t, kv, 1)
	testutil.CheckFor(t, 10*time.Second, func() error {
		if got := a.metric(t, "kvsync_connected"); got != 0 {
			return fmt.Errorf("kvsync_connected = %v, want 0 while every connection is reset", got)
		}
		return nil
	})
	changes(t, kv, 2)
	fp.remove(t, "reset")
	converges(t, 20*time.Second, kv, dir)
	a.alive(t)
}

// TestToxiLimitData: each connection is closed after 64 KiB from the server,
// in the middle of a message; values of 4 KiB keep coming. The agent resumes
// on each new connection and ends with the bucket exactly.
//
// A cut that lands while the watcher lists the bucket's keys after a
// reconnect once stalled it 30 s (the listing was not given up when the
// connection came back); the watcher now gives its listings up on a
// reconnect like its other requests.
func TestToxiLimitData(t *testing.T) {
	kv, fp, a, dir := faultSetup(t, "log: {level: debug}\n")
	fp.add(t, "limit", "limit_data", "downstream", map[string]any{"bytes": 64 << 10})
	ctx := context.Background()
	big := strings.Repeat("x", 4<<10)
	for r := range 3 {
		for i := range 40 {
			if _, err := kv.Put(ctx, fmt.Sprintf("big.%02d", i), fmt.Appendf(nil, "%d %s", r, big)); err != nil {
				t.Fatal(err)
			}
		}
		changes(t, kv, r)
	}
	// Sizes past one connection's allowance were sent: the fault happened.
	testutil.CheckFor(t, 10*time.Second, func() error {
		if !strings.Contains(a.stderr.String(), "disconnected from NATS") {
			return fmt.Errorf("no disconnect logged yet")
		}
		return nil
	})
	fp.remove(t, "limit")
	converges(t, 20*time.Second, kv, dir)
	waitFile(t, filepath.Join(dir, "big.39"), fmt.Appendf(nil, "2 %s", big), time.Now(), 5*time.Second)
	a.alive(t)
}

// TestToxiSlowServerAsksOnce: a server on its own that answers slowly (600 ms
// each way) gets one consumer creation per watcher start, not a creation every
// 500 ms while the first is unanswered: a standalone server has no meta leader
// to lose a creation, and asking again only lengthens its API queue, which is
// what overflowed it when thousands of agents reconnected at once.
func TestToxiSlowServerAsksOnce(t *testing.T) {
	s := testutil.RunServer(t, nil)
	js := jetStream(t, s)
	kv := createBucket(t, js, "app", 1)
	if _, err := kv.Put(context.Background(), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	created := make(chan string, 64)
	sub, err := js.Conn().Subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.KV_app.>", func(m *nats.Msg) { created <- m.Subject })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := js.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	fp := startFaultProxy(t, strings.TrimPrefix(s.ClientURL(), "nats://"))
	dir := t.TempDir()
	a := startAgent(t, fp.url(), fmt.Sprintf("watch: {mode: consumer}\nfiles:\n  - {name: app, bucket: app, dir: %q, fsync: false}\n", dir))
	a.waitReady(t, 20*time.Second)
	converges(t, 10*time.Second, kv, dir)

	// Slow the link, then delete the watcher's consumer: the watcher notices
	// (the server says so, or the heartbeats stop) and creates a new one.
	fp.add(t, "slow-down", "latency", "downstream", map[string]any{"latency": 600})
	fp.add(t, "slow-up", "latency", "upstream", map[string]any{"latency": 600})
	drain := func() []string {
		var got []string
		for {
			select {
			case s := <-created:
				got = append(got, s)
			default:
				return got
			}
		}
	}
	drain()
	stream, err := js.Stream(context.Background(), "KV_app")
	if err != nil {
		t.Fatal(err)
	}
	for name := range stream.ConsumerNames(context.Background()).Name() {
		if err := stream.DeleteConsumer(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kv.Put(context.Background(), "k", []byte("after")); err != nil {
		t.Fatal(err)
	}
	// The file, not converges: its KV watcher makes consumers of its own.
	deadline := time.Now().Add(30 * time.Second)
	for b, _ := os.ReadFile(filepath.Join(dir, "k")); string(b) != "after"; b, _ = os.ReadFile(filepath.Join(dir, "k")) {
		if time.Now().After(deadline) {
			t.Fatalf("file k = %q 30 s after the put, want \"after\"", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // late asks, if any, have reached the server
	if got := drain(); len(got) != 1 {
		t.Fatalf("consumers created after the watcher lost its consumer, on a slow standalone server: %d (%v), want 1; agent log:\n%s", len(got), got, a.stderr.String())
	}
}
