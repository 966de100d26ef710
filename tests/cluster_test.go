package tests

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// streamLeader returns the running node that leads stream, as the stream's
// info tells, or nil.
func streamLeader(c *testutil.Cluster, js jetstream.JetStream, stream string) *testutil.NATSProc {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil || st.CachedInfo().Cluster == nil {
		return nil
	}
	if n := c.Node(st.CachedInfo().Cluster.Leader); n != nil && n.Running() {
		return n
	}
	return nil
}

// TestFaultClusterFailover: an agent follows an R3 bucket of a 3-node cluster.
// The stream leader is shut down mid-stream: the agent converges, and the first
// put after a new leader is elected is on disk within firstPutBudget. A second
// node goes down (no quorum): the agent keeps its files and runs on. A node
// comes back: the agent converges again.
func TestFaultClusterFailover(t *testing.T) {
	c := testutil.StartCluster(t)
	_, js := testutil.ConnectRetrying(t, c.URL())
	var kv jetstream.KeyValue
	testutil.CheckFor(t, 20*time.Second, func() error { // the meta leader takes a moment
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "app", History: 1, Replicas: 3})
		return err
	})
	for i := range 20 {
		putRetrying(t, kv, fmt.Sprintf("key%03d", i), []byte("seed"), 10*time.Second)
	}
	dir := filepath.Join(t.TempDir(), "conf")
	a := startAgent(t, c.URL(), fmt.Sprintf("log: {level: debug}\nfiles:\n  - {name: app, bucket: app, dir: %q}\n", dir))
	a.waitReady(t, 20*time.Second)
	converges(t, 10*time.Second, kv, dir)

	// (1) Shut the stream leader down in the middle of a stream of changes.
	var acked atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go churn(kv, 40, 64, stop, &acked, done)
	waitAcked(t, &acked, 200, 20*time.Second)
	leader := streamLeader(c, js, "KV_app")
	if leader == nil {
		t.Fatalf("no stream leader")
	}
	leader.Stop(t)
	close(stop)
	<-done
	var elected *testutil.NATSProc
	testutil.CheckFor(t, 30*time.Second, func() error {
		if elected = streamLeader(c, js, "KV_app"); elected == nil {
			return fmt.Errorf("no new stream leader yet")
		}
		return nil
	})
	t.Logf("stream leader %s shut down; %s elected", leader.Name(), elected.Name())

	// (2) The first put after the election reaches disk within the budget.
	value := []byte(fmt.Sprintf("after failover %d", time.Now().UnixNano()))
	_, start := putRetrying(t, kv, "probe", value, 20*time.Second)
	took := waitFile(t, filepath.Join(dir, "probe"), value, start, 20*time.Second)
	t.Logf("first put after leader election on disk in %v (budget %v)", took, firstPutBudget)
	if took > firstPutBudget {
		t.Errorf("first put after leader election took %v to reach disk, want < %v; agent log (debug):\n%s", took, firstPutBudget, a.stderr.String())
	}
	stop, done = make(chan struct{}), make(chan struct{})
	go churn(kv, 40, 64, stop, &acked, done)
	waitAcked(t, &acked, acked.Load()+200, 20*time.Second)
	close(stop)
	<-done
	converges(t, 20*time.Second, kv, dir)

	// (3) A second node down: no quorum. The files stay, the agent runs on.
	held, err := dirState(dir)
	if err != nil {
		t.Fatal(err)
	}
	var second *testutil.NATSProc
	for _, n := range c.Nodes {
		if n.Running() {
			second = n
			break
		}
	}
	second.Stop(t)
	// An observation window, not a wait for a condition: for 5 s the agent
	// must stay up and keep every file as it was.
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		a.alive(t)
		files, err := dirState(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := sameState(files, held); err != nil {
			t.Fatalf("files changed without quorum: %v", err)
		}
	}

	// (4) A node back: quorum again, and the agent converges.
	second.Start(t)
	putRetrying(t, kv, "back", []byte("quorum again"), 60*time.Second)
	converges(t, 30*time.Second, kv, dir)
	a.alive(t)
}

// TestFaultClusterKill9: an agent follows an R3 bucket of a 3-node cluster of
// nats-server processes; the stream leader is SIGKILLed mid-stream (no
// goodbye to its peers or clients). The first put after a new stream leader
// and the meta group are elected again is on disk within firstPutBudget, and
// the agent converges.
//
// The node killed leads both the stream and the meta group, the worst case:
// consumer creations right after the two elections can go unanswered for
// seconds (the watcher asks for a second consumer beside an unanswered
// creation), and quick re-creations before the kill must not leave the
// watcher waiting out a grown back-off.
func TestFaultClusterKill9(t *testing.T) {
	c := testutil.StartCluster(t)
	url := c.URL()
	_, js := testutil.ConnectRetrying(t, url)
	var kv jetstream.KeyValue
	testutil.CheckFor(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "app", History: 1, Replicas: 3})
		return err
	})
	for i := range 20 {
		putRetrying(t, kv, fmt.Sprintf("key%03d", i), []byte("seed"), 10*time.Second)
	}
	dir := filepath.Join(t.TempDir(), "conf")
	a := startAgent(t, url, fmt.Sprintf("log: {level: debug}\nfiles:\n  - {name: app, bucket: app, dir: %q}\n", dir))
	a.waitReady(t, 20*time.Second)
	converges(t, 10*time.Second, kv, dir)

	leaderName := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := js.Stream(ctx, "KV_app")
		if err != nil || st.CachedInfo().Cluster == nil {
			return ""
		}
		return st.CachedInfo().Cluster.Leader
	}
	// The worst case: the node killed leads the stream and the meta group
	// (which every consumer creation needs), so both are elected again.
	meta := c.MetaLeader(t)
	for range 20 {
		if leaderName() == meta {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.LEADER.STEPDOWN.KV_app", nil)
		cancel()
		testutil.CheckFor(t, 10*time.Second, func() error {
			if leaderName() == "" {
				return fmt.Errorf("no stream leader")
			}
			return nil
		})
	}
	var acked atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go churn(kv, 40, 64, stop, &acked, done)
	waitAcked(t, &acked, 200, 20*time.Second)
	old := leaderName()
	t.Logf("stream leader %s, meta leader %s", old, meta)
	victim := c.Node(old)
	if victim == nil {
		t.Fatalf("no stream leader (%q)", old)
	}
	victim.Kill(t)
	killed := time.Now()
	close(stop)
	<-done
	testutil.CheckFor(t, 30*time.Second, func() error {
		if l := leaderName(); l == "" || l == old {
			return fmt.Errorf("no new stream leader yet (%q)", l)
		}
		return nil
	})
	t.Logf("stream leader %s killed; new stream leader after %v", old, time.Since(killed))
	// Consumers are created through the meta leader: kvsync's part starts
	// once both are back.
	testutil.CheckFor(t, 30*time.Second, func() error {
		if l := c.MetaLeader(t); l == meta {
			return fmt.Errorf("meta leader still %s", l)
		}
		return nil
	})
	t.Logf("new meta leader after %v", time.Since(killed))

	value := []byte(fmt.Sprintf("after kill %d", time.Now().UnixNano()))
	_, start := putRetrying(t, kv, "probe", value, 20*time.Second)
	took := waitFile(t, filepath.Join(dir, "probe"), value, start, 20*time.Second)
	t.Logf("first put after the kill on disk in %v (budget %v)", took, firstPutBudget)
	if took > firstPutBudget {
		t.Errorf("first put after the leader was killed took %v to reach disk, want < %v; agent log (debug):\n%s", took, firstPutBudget, a.stderr.String())
	}
	converges(t, 20*time.Second, kv, dir)
	a.alive(t)
}
