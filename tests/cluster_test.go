package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
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

// procNode is one nats-server child process of a cluster, so that it can be
// SIGKILLed (no goodbye to its peers or clients).
type procNode struct {
	name             string
	port, route, mon int
	store            string
	cmd              *exec.Cmd
	done             chan struct{}
	log              *lockedBuffer
}

func (n *procNode) start(t testing.TB, bin string, routes string) {
	t.Helper()
	n.log = &lockedBuffer{}
	n.cmd = exec.Command(bin, "-js", "-sd", n.store, "-n", n.name, "-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-m", strconv.Itoa(n.mon),
		"--cluster_name", "kvsync", "--cluster", fmt.Sprintf("nats://127.0.0.1:%d", n.route), "--routes", routes)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("start nats-server: %v", err)
	}
	n.done = make(chan struct{})
	go func() {
		_ = n.cmd.Wait()
		close(n.done)
	}()
}

func (n *procNode) kill() {
	select {
	case <-n.done:
		return
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
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
	bin, err := natsServerBin()
	if err != nil {
		t.Fatal(err)
	}
	nodes := make([]*procNode, 3)
	var routes, urls []string
	for i := range nodes {
		nodes[i] = &procNode{name: fmt.Sprintf("n%d", i+1), port: freePort(t), route: freePort(t), mon: freePort(t), store: t.TempDir()}
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", nodes[i].route))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", nodes[i].port))
	}
	for _, n := range nodes {
		n.start(t, bin, strings.Join(routes, ","))
		t.Cleanup(n.kill)
	}
	url := strings.Join(urls, ",")
	_, js := connectRetrying(t, url)
	var kv jetstream.KeyValue
	pollFor(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
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
	meta := metaLeader(t, nodes)
	for range 20 {
		if leaderName() == meta {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.LEADER.STEPDOWN.KV_app", nil)
		cancel()
		pollFor(t, 10*time.Second, func() error {
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
	var victim *procNode
	for _, n := range nodes {
		if n.name == old {
			victim = n
		}
	}
	if victim == nil {
		t.Fatalf("no stream leader (%q)", old)
	}
	victim.kill()
	killed := time.Now()
	close(stop)
	<-done
	pollFor(t, 30*time.Second, func() error {
		if l := leaderName(); l == "" || l == old {
			return fmt.Errorf("no new stream leader yet (%q)", l)
		}
		return nil
	})
	t.Logf("stream leader %s killed; new stream leader after %v", old, time.Since(killed))
	// Consumers are created through the meta leader: kvsync's part starts
	// once both are back.
	var alive []*procNode
	for _, n := range nodes {
		if n != victim {
			alive = append(alive, n)
		}
	}
	pollFor(t, 30*time.Second, func() error {
		if l := metaLeader(t, alive); l == meta {
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

// metaLeader is the name of the cluster's meta leader, read from a node's
// monitoring endpoint.
func metaLeader(t testing.TB, nodes []*procNode) string {
	t.Helper()
	var leader string
	pollFor(t, 10*time.Second, func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz", nodes[0].mon))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var jsz struct {
			Meta struct {
				Leader string `json:"leader"`
			} `json:"meta_cluster"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&jsz); err != nil {
			return err
		}
		if leader = jsz.Meta.Leader; leader == "" {
			return fmt.Errorf("no meta leader")
		}
		return nil
	})
	return leader
}
