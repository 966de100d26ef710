package testutil

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cluster is a JetStream cluster of three nats-server child processes on
// loopback ports, one store each, so that a node can be SIGKILLed (no
// goodbye to its peers or clients) and started again.
type Cluster struct {
	// Nodes are the servers, named n1, n2, n3.
	Nodes []*NATSProc
	mon   map[*NATSProc]int // monitoring port of each node
}

// StartCluster starts the three nodes together, so that the routes form at
// once, and waits until each accepts clients and the cluster has a meta
// leader. The nodes are killed when the test ends.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	const size = 3
	c := &Cluster{mon: make(map[*NATSProc]int)}
	var routes []string
	route := make([]int, size)
	for i := range size {
		route[i] = FreePort(tb)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", route[i]))
	}
	for i := range size {
		n := &NATSProc{name: fmt.Sprintf("n%d", i+1), port: FreePort(tb), store: tb.TempDir()}
		mon := FreePort(tb)
		n.args = []string{"-js", "-sd", n.store, "-n", n.name, "-a", "127.0.0.1",
			"-p", strconv.Itoa(n.port), "-m", strconv.Itoa(mon),
			"--cluster_name", "kvsync", "--cluster", fmt.Sprintf("nats://127.0.0.1:%d", route[i]),
			"--routes", strings.Join(routes, ",")}
		c.Nodes = append(c.Nodes, n)
		c.mon[n] = mon
	}
	// Start waits for a node to accept clients only: all are started before
	// the first wait, so no node waits alone for its peers.
	NATSServerBin(tb) // build before the nodes start, not between them
	for _, n := range c.Nodes {
		tb.Cleanup(func() { n.Kill(tb) })
		n.launch(tb)
	}
	for _, n := range c.Nodes {
		n.wait(tb)
	}
	c.metaLeader(tb, 30*time.Second) // the first election takes a few seconds
	return c
}

// URL is the comma-separated client URL list of the nodes.
func (c *Cluster) URL() string {
	var u []string
	for _, n := range c.Nodes {
		u = append(u, n.URL())
	}
	return strings.Join(u, ",")
}

// Node returns the node of that server name, or nil.
func (c *Cluster) Node(name string) *NATSProc {
	for _, n := range c.Nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// MetaLeader returns the server name of the cluster's meta leader, as the
// monitoring endpoint of a running node reports it. It waits (up to 10 s) for
// one to be elected, and fails the test if none is.
func (c *Cluster) MetaLeader(tb testing.TB) string {
	tb.Helper()
	return c.metaLeader(tb, 10*time.Second)
}

func (c *Cluster) metaLeader(tb testing.TB, timeout time.Duration) string {
	tb.Helper()
	var leader string
	CheckFor(tb, timeout, func() error {
		var n *NATSProc
		for _, m := range c.Nodes {
			if m.Running() {
				n = m
				break
			}
		}
		if n == nil {
			return fmt.Errorf("no node runs")
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz", c.mon[n]))
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
			return fmt.Errorf("no meta leader (asked %s)", n.name)
		}
		return nil
	})
	return leader
}
