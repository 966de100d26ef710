package tests

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natstest "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go/jetstream"
)

// clusterNode is one server of an in-process JetStream cluster. Its options
// are kept so that it can be started again on the same ports and store.
type clusterNode struct {
	opts server.Options
	srv  *server.Server
}

func (n *clusterNode) up() bool { return n.srv != nil && n.srv.Running() }

func (n *clusterNode) start() { n.srv = natstest.RunServer(&n.opts) }

func (n *clusterNode) shutdown() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// startCluster runs a 3-node JetStream cluster on fixed loopback ports, one
// store each. The nodes are shut down when the test ends.
func startCluster(t testing.TB) []*clusterNode {
	t.Helper()
	const size = 3
	client, route := make([]int, size), make([]int, size)
	var routes []string
	for i := range size {
		client[i], route[i] = freePort(t), freePort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", route[i]))
	}
	nodes := make([]*clusterNode, size)
	for i := range size {
		opts := natstest.DefaultTestOptions
		opts.ServerName = fmt.Sprintf("n%d", i+1)
		opts.Host, opts.Port = "127.0.0.1", client[i]
		opts.JetStream = true
		opts.StoreDir = t.TempDir()
		opts.JetStreamMaxMemory, opts.JetStreamMaxStore = 64<<20, 256<<20
		opts.Cluster = server.ClusterOpts{Name: "kvsync", Host: "127.0.0.1", Port: route[i]}
		opts.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		nodes[i] = &clusterNode{opts: opts}
	}
	// RunServer waits for each to accept clients; start them together so the
	// routes form at once.
	done := make(chan struct{})
	for _, n := range nodes {
		go func() {
			n.start()
			done <- struct{}{}
		}()
	}
	for range nodes {
		<-done
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			if n.up() {
				n.shutdown()
			}
		}
	})
	return nodes
}

// urls is the comma-separated client URL list of the cluster.
func clusterURLs(nodes []*clusterNode) string {
	var u []string
	for _, n := range nodes {
		u = append(u, fmt.Sprintf("nats://127.0.0.1:%d", n.opts.Port))
	}
	return strings.Join(u, ",")
}

// streamLeader returns the running node that leads stream, or nil.
func streamLeader(nodes []*clusterNode, stream string) *clusterNode {
	for _, n := range nodes {
		if n.up() && n.srv.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return n
		}
	}
	return nil
}

// TestFaultClusterFailover: an agent follows an R3 bucket of a 3-node cluster.
// The stream leader is shut down mid-stream: the agent converges, and the first
// put after a new leader is elected is on disk within firstPutBudget. A second
// node goes down (no quorum): the agent keeps its files and runs on. A node
// comes back: the agent converges again.
func TestFaultClusterFailover(t *testing.T) {
	nodes := startCluster(t)
	_, js := connectRetrying(t, clusterURLs(nodes))
	var kv jetstream.KeyValue
	pollFor(t, 20*time.Second, func() error { // the meta leader takes a moment
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
	a := startAgent(t, clusterURLs(nodes), fmt.Sprintf("log: {level: debug}\nfiles:\n  - {name: app, bucket: app, dir: %q}\n", dir))
	a.waitReady(t, 20*time.Second)
	converges(t, 10*time.Second, kv, dir)

	// (1) Shut the stream leader down in the middle of a stream of changes.
	var acked atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go churn(kv, 40, 64, stop, &acked, done)
	waitAcked(t, &acked, 200, 20*time.Second)
	leader := streamLeader(nodes, "KV_app")
	if leader == nil {
		t.Fatalf("no stream leader")
	}
	leader.shutdown()
	close(stop)
	<-done
	var elected *clusterNode
	pollFor(t, 30*time.Second, func() error {
		if elected = streamLeader(nodes, "KV_app"); elected == nil {
			return fmt.Errorf("no new stream leader yet")
		}
		return nil
	})
	t.Logf("stream leader %s shut down; %s elected", leader.opts.ServerName, elected.opts.ServerName)

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
	var second *clusterNode
	for _, n := range nodes {
		if n.up() {
			second = n
			break
		}
	}
	second.shutdown()
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
	second.start()
	putRetrying(t, kv, "back", []byte("quorum again"), 60*time.Second)
	converges(t, 30*time.Second, kv, dir)
	a.alive(t)
}
