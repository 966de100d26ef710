package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// bucketLimitStatus is the part of a bucket's GET /status this file reads.
type bucketLimitStatus struct {
	Buckets []struct {
		Name          string `json:"name"`
		Synced        bool   `json:"synced"`
		ConsumerLimit bool   `json:"consumer_limit_reached"`
		Error         string `json:"error"`
	} `json:"buckets"`
}

// TestConsumerLimit: a bucket whose stream allows 3 consumers, 5 agents.
// Three follow it; the two refused say so once at ERROR with the fix, in
// /status, in a metric and in the /readyz body, keep retrying, and become
// ready soon after the limit is raised.
func TestConsumerLimit(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	agents, dirs := limitedFleet(t, url)

	// Settle: three ready, two refused for the limit.
	var ready, refused []*agentProc
	testutil.CheckFor(t, 20*time.Second, func() error {
		ready, refused = nil, nil
		for _, a := range agents {
			a.alive(t)
			code, body, err := a.get("/readyz")
			if err != nil {
				return err
			}
			switch {
			case code == http.StatusOK:
				ready = append(ready, a)
			case strings.Contains(body, "maximum consumers limit reached"):
				refused = append(refused, a)
			}
		}
		if len(ready) != 3 || len(refused) != 2 {
			return fmt.Errorf("%d ready, %d refused, want 3 and 2", len(ready), len(refused))
		}
		return nil
	})
	for _, a := range refused {
		_, body, _ := a.get("/readyz")
		for _, want := range []string{"bucket app:", "has 3 consumers and its max_consumers is 3",
			"kvsync bucket add app --max-consumers N", "nats stream edit KV_app --max-consumers N",
			"jetstream { limits { default_max_consumers: N } }"} {
			if !strings.Contains(body, want) {
				t.Errorf("/readyz body lacks %q:\n%s", want, body)
			}
		}
		st := limitStatus(t, a)
		if len(st.Buckets) != 1 || !st.Buckets[0].ConsumerLimit || !strings.Contains(st.Buckets[0].Error, "--max-consumers") {
			t.Errorf("/status buckets=%+v, want app with consumer_limit_reached and the fix", st.Buckets)
		}
		if got := a.metric(t, "kvsync_consumer_limit_reached", `bucket="app"`); got != 1 {
			t.Errorf("kvsync_consumer_limit_reached=%v, want 1", got)
		}
		// It keeps trying (a DEBUG line each time), and says so at ERROR once.
		testutil.CheckFor(t, 10*time.Second, func() error {
			n := 0
			for _, l := range strings.Split(a.stderr.String(), "\n") {
				if strings.Contains(l, "level=DEBUG") && strings.Contains(l, "maximum consumers limit reached") {
					n++
				}
			}
			if n < 3 {
				return fmt.Errorf("%d refusals logged, want 3 or more", n)
			}
			return nil
		})
		if n := strings.Count(a.stderr.String(), "level=ERROR"); n != 1 {
			t.Errorf("%d ERROR lines, want 1:\n%s", n, a.stderr.String())
		}
	}
	for _, a := range ready {
		if got := a.metric(t, "kvsync_consumer_limit_reached", `bucket="app"`); got != 0 {
			t.Errorf("a ready agent: kvsync_consumer_limit_reached=%v, want 0", got)
		}
	}

	// The fix the message names: every agent follows the bucket soon after.
	out := mustKvsync(t, "bucket", "add", "app", "--max-consumers", "10", "-s", url)
	if want := "bucket app exists; max consumers changed from 3 to 10\n"; out != want {
		t.Fatalf("bucket add=%q, want %q", out, want)
	}
	for _, a := range agents {
		a.waitReady(t, 15*time.Second)
	}
	mustKvsync(t, "kv", "put", "app", "k", "v2", "-s", url)
	for i, a := range agents {
		waitFile(t, filepath.Join(dirs[i], "k"), []byte("v2"), time.Now(), 10*time.Second)
		if got := a.metric(t, "kvsync_consumer_limit_reached", `bucket="app"`); got != 0 {
			t.Errorf("after the fix: kvsync_consumer_limit_reached=%v, want 0", got)
		}
		if st := limitStatus(t, a); st.Buckets[0].ConsumerLimit || st.Buckets[0].Error != "" {
			t.Errorf("after the fix: /status buckets=%+v", st.Buckets)
		}
	}
	for _, a := range refused {
		if !strings.Contains(a.stderr.String(), "consumer limit no longer blocks the bucket") {
			t.Errorf("the recovery is not logged:\n%s", a.stderr.String())
		}
	}
}

// limitedFleet makes bucket app (key k = v1) on the server at url, whose
// stream allows 3 consumers, and starts 5 agents that project it, each into
// a folder of its own (dirs). Their logs are printed if the test fails.
func limitedFleet(t *testing.T, url string) (agents []*agentProc, dirs []string) {
	t.Helper()
	mustKvsync(t, "bucket", "add", "app", "--max-consumers", "3", "-s", url)
	mustKvsync(t, "kv", "put", "app", "k", "v1", "-s", url)
	agents = make([]*agentProc, 5)
	dirs = make([]string, 5)
	for i := range agents {
		dirs[i] = t.TempDir()
		agents[i] = startAgent(t, url, fmt.Sprintf("log: {level: debug}\nfiles:\n  - {name: f, bucket: app, dir: %q}\n", dirs[i]))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, a := range agents {
				t.Logf("agent %d stderr:\n%s", i, a.stderr.String())
			}
		}
	})
	return agents, dirs
}

func limitStatus(t *testing.T, a *agentProc) bucketLimitStatus {
	t.Helper()
	_, body, err := a.get("/status")
	if err != nil {
		t.Fatal(err)
	}
	var st bucketLimitStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, body)
	}
	return st
}

// TestBucketMaxConsumers: `bucket add` sets max_consumers (kvsync's default
// without the flag), `bucket info` shows it, an existing bucket's limit
// changes only when the flag is given, and a bad value is a usage error.
func TestBucketMaxConsumers(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	js := jetStream(t, s)
	ctx := context.Background()
	maxc := func(bucket string) int {
		t.Helper()
		st, err := js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().Config.MaxConsumers
	}

	mustKvsync(t, "bucket", "add", "dflt", "-s", url)
	if got, want := maxc("dflt"), 10000; got != want {
		t.Fatalf("default max_consumers=%d, want %d", got, want)
	}
	mustKvsync(t, "bucket", "add", "set", "--max-consumers", "250", "-s", url)
	if got, want := maxc("set"), 250; got != want {
		t.Fatalf("max_consumers=%d, want %d", got, want)
	}
	mustKvsync(t, "bucket", "add", "none", "--max-consumers", "-1", "-s", url)
	if got, want := maxc("none"), -1; got != want {
		t.Fatalf("--max-consumers -1: max_consumers=%d, want %d", got, want)
	}

	info := mustKvsync(t, "bucket", "info", "set", "-s", url)
	if !strings.Contains(info, "max consumers:") || !strings.Contains(info, "250") {
		t.Fatalf("info=%q, want max consumers 250", info)
	}
	var bi struct {
		MaxConsumers int `json:"max_consumers"`
		Consumers    int `json:"consumers"`
	}
	if err := json.Unmarshal([]byte(mustKvsync(t, "bucket", "info", "none", "--json", "-s", url)), &bi); err != nil {
		t.Fatal(err)
	}
	if bi.MaxConsumers != -1 || bi.Consumers != 0 {
		t.Fatalf("info --json: max_consumers=%d consumers=%d, want -1 and 0", bi.MaxConsumers, bi.Consumers)
	}

	// Existing bucket without the flag: unchanged, with a note when it has
	// no limit of its own.
	out, errs, code := runKvsync(t, "bucket", "add", "none", "-s", url)
	if code != 0 || out != "bucket none exists with the same settings\n" || !strings.Contains(errs, "--max-consumers") {
		t.Fatalf("add on a bucket without a limit: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if got := maxc("none"); got != -1 {
		t.Fatalf("max_consumers changed to %d without the flag", got)
	}
	// With the flag: changed and said.
	if got, want := mustKvsync(t, "bucket", "add", "none", "--max-consumers", "2000", "-s", url),
		"bucket none exists; max consumers changed from none (the server's default) to 2000\n"; got != want {
		t.Fatalf("add --max-consumers on an existing bucket=%q, want %q", got, want)
	}
	if got := maxc("none"); got != 2000 {
		t.Fatalf("max_consumers=%d, want 2000", got)
	}
	// With the flag and another difference: refused, nothing changed.
	if _, errs, code := runKvsync(t, "bucket", "add", "none", "--history", "3", "--max-consumers", "5", "-s", url); code != 1 || !strings.Contains(errs, "history 1 (asked 3)") {
		t.Fatalf("add with other settings: exit %d, stderr %q", code, errs)
	}
	if got := maxc("none"); got != 2000 {
		t.Fatalf("max_consumers=%d after a refused add, want 2000", got)
	}

	for _, bad := range []string{"0", "-2", "x"} {
		_, errs, code := runKvsync(t, "bucket", "add", "b", "--max-consumers", bad, "-s", url)
		if code != 2 || !strings.Contains(errs, "max-consumers") {
			t.Errorf("--max-consumers %s: exit %d, stderr %q; want 2 naming the flag", bad, code, errs)
		}
	}
	if _, errs, code := runKvsync(t, "bucket", "info", "set", "--max-consumers", "5", "-s", url); code != 2 || !strings.Contains(errs, "does not take --max-consumers") {
		t.Errorf("info --max-consumers: exit %d, stderr %q", code, errs)
	}
	if _, err := js.Stream(ctx, "KV_b"); err == nil {
		t.Errorf("a refused add created the bucket")
	}
}

// TestBucketAddUnderAccountLimit: without --max-consumers, an account that
// allows fewer consumers than kvsync's default gets a bucket without a limit
// of its own, with a note; with the flag over the account's limit, an error.
func TestBucketAddUnderAccountLimit(t *testing.T) {
	s := testutil.RunServer(t, nil)
	if err := s.GlobalAccount().UpdateJetStreamLimits(map[string]server.JetStreamAccountLimits{
		"": {MaxConsumers: 50, MaxMemory: -1, MaxStore: -1, MaxStreams: -1, MaxAckPending: -1},
	}); err != nil {
		t.Fatal(err)
	}
	url := s.ClientURL()
	out, errs, code := runKvsync(t, "bucket", "add", "app", "-s", url)
	if code != 0 || out != "bucket app created\n" || !strings.Contains(errs, "the account allows fewer consumers than 10000") {
		t.Fatalf("add: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	st, err := jetStream(t, s).Stream(context.Background(), "KV_app")
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.MaxConsumers; got != -1 {
		t.Fatalf("max_consumers=%d, want -1", got)
	}
	_, errs, code = runKvsync(t, "bucket", "add", "big", "--max-consumers", "100", "-s", url)
	if code != 1 || !strings.Contains(errs, "create bucket big") || !strings.Contains(errs, "maximum consumers limit reached") {
		t.Fatalf("add --max-consumers over the account's limit: exit %d, stderr %q", code, errs)
	}
}

// TestBucketAddMirrorUsage: bad --mirror flags are usage errors and create
// nothing; a mirror in the same domain is made and shown by bucket info.
func TestBucketAddMirrorUsage(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	for _, args := range [][]string{
		{"--mirror-domain", "hub"},
		{"--mirror", "bad name"},
		{"--mirror", "app", "--mirror-domain", "a.b"},
		{"--mirror", "app", "--mirror-domain", "*"},
	} {
		_, errs, code := runKvsync(t, append([]string{"bucket", "add", "copy", "-s", url}, args...)...)
		if code != 2 || !strings.Contains(errs, "mirror") {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming the flag", args, code, errs)
		}
	}
	if _, err := jetStream(t, s).Stream(context.Background(), "KV_copy"); err == nil {
		t.Fatalf("a refused add created the bucket")
	}
	mustKvsync(t, "bucket", "add", "app", "-s", url)
	mustKvsync(t, "kv", "put", "app", "k", "v", "-s", url)
	if got, want := mustKvsync(t, "bucket", "add", "copy", "--mirror", "app", "-s", url), "bucket copy created (a mirror of app)\n"; got != want {
		t.Fatalf("add --mirror=%q, want %q", got, want)
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		var bi struct {
			Mirror    string `json:"mirror"`
			Values    uint64 `json:"values"`
			MirrorLag uint64 `json:"mirror_lag"`
		}
		if err := json.Unmarshal([]byte(mustKvsync(t, "bucket", "info", "copy", "--json", "-s", url)), &bi); err != nil {
			return err
		}
		if bi.Mirror != "app" || bi.Values != 1 || bi.MirrorLag != 0 {
			return fmt.Errorf("info --json: %+v, want a mirror of app with its 1 value", bi)
		}
		return nil
	})
	if info := mustKvsync(t, "bucket", "info", "copy", "-s", url); !strings.Contains(info, "mirror of:") || !strings.Contains(info, "app") {
		t.Fatalf("info=%q, want the mirror's origin", info)
	}
}

// TestConsumerLimitServerDefault: the default server (1,000 consumers per
// stream unless configured). On a bucket made without a limit of its own and
// already holding 1,000 durable consumers (standing in for 1,000 agents: a
// real fleet of that size is the bench's job), the next agent is refused with
// a message that names the server's default and the fix, and follows the
// bucket once `bucket add --max-consumers` raised it. On a bucket kvsync
// made, 1,100 consumers and the agent all fit.
func TestConsumerLimitServerDefault(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	js := jetStream(t, s)
	ctx := context.Background()
	fill := func(bucket string, n int) {
		t.Helper()
		for i := range n {
			if _, err := js.CreateConsumer(ctx, "KV_"+bucket, jetstream.ConsumerConfig{
				Durable: fmt.Sprintf("c%d", i), AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true,
			}); err != nil {
				t.Fatalf("consumer %d of %s: %v", i, bucket, err)
			}
		}
	}

	createBucket(t, js, "plain", 1) // as the library makes it: no limit of its own
	mustKvsync(t, "kv", "put", "plain", "k", "v", "-s", url)
	fill("plain", 1000)
	dir := t.TempDir()
	a := startAgent(t, url, fmt.Sprintf("files:\n  - {name: f, bucket: plain, dir: %q}\n", dir))
	testutil.CheckFor(t, 10*time.Second, func() error {
		a.alive(t)
		code, body, err := a.get("/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "no max_consumers of its own, so the server's default applies") {
			return fmt.Errorf("/readyz %d %q, want 503 naming the server's default", code, body)
		}
		return nil
	})
	// /readyz can turn before the line reaches the pipe: the state is set
	// first, then the line is logged.
	testutil.CheckFor(t, 5*time.Second, func() error {
		if n := strings.Count(a.stderr.String(), "level=ERROR"); n == 0 {
			return fmt.Errorf("no ERROR line yet:\n%s", a.stderr.String())
		}
		return nil
	})
	mustKvsync(t, "bucket", "add", "plain", "--max-consumers", "1100", "-s", url)
	a.waitReady(t, 15*time.Second)
	waitFile(t, filepath.Join(dir, "k"), []byte("v"), time.Now(), 5*time.Second)
	// Said once, however often the agent retried meanwhile.
	if n := strings.Count(a.stderr.String(), "level=ERROR"); n != 1 {
		t.Fatalf("%d ERROR lines, want 1:\n%s", n, a.stderr.String())
	}

	mustKvsync(t, "bucket", "add", "made", "-s", url)
	mustKvsync(t, "kv", "put", "made", "k", "v", "-s", url)
	fill("made", 1100)
	dir2 := t.TempDir()
	b := startAgent(t, url, fmt.Sprintf("files:\n  - {name: f, bucket: made, dir: %q}\n", dir2))
	b.waitReady(t, 10*time.Second)
	waitFile(t, filepath.Join(dir2, "k"), []byte("v"), time.Now(), 5*time.Second)
}

// TestConsumerLimitHoldersKeepTheirConsumers: a bucket whose stream allows 3
// consumers, 5 agents: the three that follow it keep following it while the
// stream reports news again and again (each update nudges every agent, and
// a nudged agent makes its consumer again), and the two refused stay
// refused: slots do not change hands.
func TestConsumerLimitHoldersKeepTheirConsumers(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	agents, _ := limitedFleet(t, url)
	split := func() (ready, refused []*agentProc, err error) {
		for _, a := range agents {
			a.alive(t)
			code, body, err := a.get("/readyz")
			if err != nil {
				return nil, nil, err
			}
			switch {
			case code == http.StatusOK:
				ready = append(ready, a)
			case strings.Contains(body, "maximum consumers limit reached"):
				refused = append(refused, a)
			}
		}
		return ready, refused, nil
	}
	var holders []*agentProc
	testutil.CheckFor(t, 20*time.Second, func() error {
		ready, refused, err := split()
		if err != nil {
			return err
		}
		if len(ready) != 3 || len(refused) != 2 {
			return fmt.Errorf("%d ready, %d refused, want 3 and 2", len(ready), len(refused))
		}
		holders = ready
		return nil
	})
	refusals := func(a *agentProc) int {
		return strings.Count(a.stderr.String(), "maximum consumers limit reached")
	}
	before := make([]int, len(holders))
	for i, a := range holders {
		before[i] = refusals(a)
	}

	js := jetStream(t, s)
	ctx := context.Background()
	for i := range 60 {
		st, err := js.Stream(ctx, "KV_app")
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		cfg.Description = fmt.Sprintf("update %d", i)
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // the refused agents' spread retries after the last news
	for i, a := range holders {
		if n := refusals(a) - before[i]; n != 0 {
			t.Errorf("a holder was refused %d times after the stream's updates", n)
		}
		if code, body, _ := a.get("/readyz"); code != http.StatusOK {
			t.Errorf("a holder is not ready: %d %s", code, body)
		}
	}
	mustKvsync(t, "kv", "put", "app", "k", "v2", "-s", url)
	ready, refused, err := split()
	if err != nil {
		t.Fatal(err)
	}
	if len(ready) != 3 || len(refused) != 2 {
		t.Fatalf("%d ready, %d refused after the updates, want 3 and 2", len(ready), len(refused))
	}
}
