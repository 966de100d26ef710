package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// fleetAgent starts `kvsync run` with a files projection of bucket app
// (keys conf.>) into a folder of its own, reporting to the status bucket
// with the given interval. extra is more YAML for the files entry.
func fleetAgent(t *testing.T, url, id, labels, interval, extra string) (*agentProc, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "out")
	body := fmt.Sprintf(`agent: {id: %q, labels: {%s}}
report: {interval: %s}
files:
  - {name: conf, bucket: app, keys: ["conf.>"], dir: %q, fsync: false%s}
`, id, labels, interval, dir, extra)
	a := startAgent(t, url, body)
	return a, dir
}

// fleetRun runs a fleet command against url and returns stdout, stderr, exit code.
func fleetRun(t *testing.T, url string, args ...string) (string, string, int) {
	t.Helper()
	return runKvsync(t, append(append([]string{"fleet"}, args...), "-s", url)...)
}

func putKey(t *testing.T, kv jetstream.KeyValue, key, value string) uint64 {
	t.Helper()
	rev, err := kv.Put(context.Background(), key, []byte(value))
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return rev
}

// fleetStatusJSON is the part of `fleet status --json` the tests read.
type fleetStatusJSON struct {
	Agents []struct {
		ID      string            `json:"id"`
		Labels  map[string]string `json:"labels"`
		State   string            `json:"state"`
		Applied uint64            `json:"applied_revision"`
	} `json:"agents"`
	Invalid []struct{ Key, Error string } `json:"invalid"`
}

// waitRecords waits until the status bucket holds n readable records.
func waitRecords(t *testing.T, url string, n int) {
	t.Helper()
	testutil.CheckFor(t, 20*time.Second, func() error {
		out, errs, code := fleetRun(t, url, "status", "--json")
		if code != 0 {
			return fmt.Errorf("fleet status: exit %d: %s", code, errs)
		}
		var st fleetStatusJSON
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		if len(st.Agents) != n {
			return fmt.Errorf("%d records, want %d", len(st.Agents), n)
		}
		return nil
	})
}

func fleetStatus(t *testing.T, url string, args ...string) fleetStatusJSON {
	t.Helper()
	out, errs, code := fleetRun(t, url, append([]string{"status", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("fleet status: exit %d: %s", code, errs)
	}
	var st fleetStatusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("fleet status --json: %v\n%s", err, out)
	}
	return st
}

// TestFleetRollout: three agents with different ids and labels report to one
// status bucket; fleet wait and kv put --wait return once all have a put;
// a frozen agent makes fleet wait time out naming it, and once thawed it
// catches up.
func TestFleetRollout(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	js := jetStream(t, s)
	kv := createBucket(t, js, "app", 1)
	var agents []*agentProc
	for i, labels := range []string{"role: web, region: eu", "role: web, region: us", "role: db, region: eu"} {
		a, _ := fleetAgent(t, url, fmt.Sprintf("host-%d", i+1), labels, "30s", "")
		agents = append(agents, a)
	}
	for _, a := range agents {
		a.waitReady(t, 20*time.Second)
	}
	waitRecords(t, url, 3)
	rev := putKey(t, kv, "conf.nginx", "v1")

	out, errs, code := fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.nginx", "--timeout", "20s")
	if code != 0 {
		t.Fatalf("fleet wait: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if want := fmt.Sprintf("3/3 agents have app/conf.nginx at revision ≥ %d", rev); !strings.Contains(out, want) {
		t.Errorf("fleet wait says %q, want %q", out, want)
	}
	out, errs, code = fleetRun(t, url, "status", "--bucket", "app", "--key", "conf.nginx")
	if code != 0 {
		t.Fatalf("fleet status: exit %d: %s", code, errs)
	}
	for _, want := range []string{"host-1", "host-2", "host-3", "region=eu,role=db", fmt.Sprintf("3/3 agents have app/conf.nginx at revision ≥ %d", rev)} {
		if !strings.Contains(out, want) {
			t.Errorf("fleet status does not show %q:\n%s", want, out)
		}
	}
	t.Logf("fleet status:\n%s", out)
	st := fleetStatus(t, url, "--bucket", "app", "--key", "conf.nginx", "-l", "role=web")
	if len(st.Agents) != 2 {
		t.Fatalf("fleet status -l role=web: %d agents, want 2: %+v", len(st.Agents), st.Agents)
	}
	for _, a := range st.Agents {
		if a.State != "applied" || a.Applied < rev || a.Labels["role"] != "web" {
			t.Errorf("agent %s: state %s, applied %d, labels %v; want applied at ≥ %d, role=web", a.ID, a.State, a.Applied, a.Labels, rev)
		}
	}

	// kv put --wait: the put, then the wait for its revision.
	out, errs, code = runKvsync(t, "kv", "put", "app", "conf.nginx", "v2", "--wait", "20s", "-s", url)
	if code != 0 || !strings.Contains(out, "3/3 agents have app/conf.nginx") {
		t.Fatalf("kv put --wait: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}

	// Frozen: the put does not reach host-3; wait times out naming it.
	frozen := agents[2]
	if err := frozen.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			_ = frozen.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	rev = putKey(t, kv, "conf.nginx", "v3")
	out, errs, code = fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.nginx", "--timeout", "3s")
	t.Logf("fleet wait, host-3 frozen: %s", errs)
	if code != 1 || !strings.Contains(errs, "timed out") || !strings.Contains(errs, "1 behind: host-3") {
		t.Fatalf("fleet wait with host-3 frozen: exit %d, want 1 naming host-3 as behind\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if err := frozen.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	thawed = true
	out, errs, code = fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.nginx", "--revision", fmt.Sprint(rev), "--timeout", "20s")
	if code != 0 {
		t.Fatalf("fleet wait after SIGCONT: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}

	// A clean shutdown deletes the record.
	if code := agents[0].stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("agent exit %d", code)
	}
	st = fleetStatus(t, url)
	for _, a := range st.Agents {
		if a.ID == "host-1" {
			t.Errorf("host-1 stopped cleanly but its record is still there")
		}
	}
	if len(st.Agents) != 2 {
		t.Errorf("%d agents after host-1 stopped, want 2", len(st.Agents))
	}
}

// TestFleetActionFails: an agent whose action fails makes fleet wait exit 1
// at once, naming the agent and the action's error.
func TestFleetActionFails(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	js := jetStream(t, s)
	kv := createBucket(t, js, "app", 1)
	good, _ := fleetAgent(t, url, "good", "role: web", "30s", `, on_change: {command: ["true"]}`)
	bad, _ := fleetAgent(t, url, "bad", "role: web", "30s", `, on_change: {command: ["sh", "-c", "echo nginx: config test failed >&2; exit 1"]}`)
	good.waitReady(t, 20*time.Second)
	bad.waitReady(t, 20*time.Second)
	waitRecords(t, url, 2)
	putKey(t, kv, "conf.nginx", "v1")
	out, errs, code := fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.nginx", "--timeout", "50s")
	if code != 1 {
		t.Fatalf("fleet wait: exit %d, want 1\nstdout: %s\nstderr: %s", code, out, errs)
	}
	for _, want := range []string{"failure reported", "1 failing: bad", "nginx: config test failed"} {
		if !strings.Contains(errs, want) {
			t.Errorf("fleet wait does not say %q:\n%s", want, errs)
		}
	}
	if strings.Contains(errs, "timed out") {
		t.Errorf("fleet wait timed out instead of failing at once: %s", errs)
	}
	// -l selects the good one only: 0.
	if _, errs, code := fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.nginx", "-l", "role=web,nope=x", "--min", "0", "--timeout", "20s"); code != 0 {
		t.Errorf("fleet wait --min 0 with no agent selected: exit %d: %s", code, errs)
	}
	out, _, _ = fleetRun(t, url, "status")
	if !strings.Contains(out, "nginx: config test failed") {
		t.Errorf("fleet status does not show the action's error:\n%s", out)
	}
}

// TestFleetKilledAgentExpires: a SIGKILLed agent's record expires after 3
// intervals and it no longer counts for fleet wait.
func TestFleetKilledAgentExpires(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	js := jetStream(t, s)
	kv := createBucket(t, js, "app", 1)
	live, _ := fleetAgent(t, url, "live", "", "1s", "")
	doomed, _ := fleetAgent(t, url, "doomed", "", "1s", "")
	live.waitReady(t, 20*time.Second)
	doomed.waitReady(t, 20*time.Second)
	waitRecords(t, url, 2)
	doomed.stop(t, syscall.SIGKILL, 10*time.Second)
	rev := putKey(t, kv, "conf.x", "1")
	// doomed never applies it: fleet wait returns 0 only once its record
	// has expired (3 s) and it no longer counts.
	out, errs, code := fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.x", "--revision", fmt.Sprint(rev), "--timeout", "30s")
	if code != 0 || !strings.Contains(out, "1/1 agents") {
		t.Fatalf("fleet wait: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	st := fleetStatus(t, url)
	if len(st.Agents) != 1 || st.Agents[0].ID != "live" {
		t.Errorf("records after the kill: %+v, want live only", st.Agents)
	}
}

// TestFleetNoReportPermission: an agent that may not write the status
// bucket keeps projecting and says why it cannot report.
func TestFleetNoReportPermission(t *testing.T) {
	s := testutil.RunServer(t, func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "admin", Password: "a"},
			{Username: "agent", Password: "a", Permissions: &server.Permissions{
				Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$KV.kvsync_status.>"}},
			}},
		}
	})
	js := jetStream(t, s, nats.UserInfo("admin", "a"))
	kv := createBucket(t, js, "app", 1)
	if _, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "kvsync_status", LimitMarkerTTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	url := strings.Replace(s.ClientURL(), "nats://", "nats://agent:a@", 1)
	a, dir := fleetAgent(t, url, "walled", "", "1s", "")
	a.waitReady(t, 20*time.Second)
	putKey(t, kv, "conf.x", "projected")
	testutil.CheckFor(t, 10*time.Second, func() error {
		b, err := os.ReadFile(filepath.Join(dir, "conf.x"))
		if err != nil || string(b) != "projected" {
			return fmt.Errorf("conf.x: %q, %v", b, err)
		}
		return nil
	})
	testutil.CheckFor(t, 20*time.Second, func() error {
		code, body, err := a.get("/status")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("/status: %d %v", code, err)
		}
		var st struct {
			ID     string
			Report *struct{ Bucket, Error string }
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err
		}
		if st.ID != "walled" {
			return fmt.Errorf("/status id %q, want walled", st.ID)
		}
		if st.Report == nil || !strings.Contains(st.Report.Error, "permissions violation") {
			return fmt.Errorf("/status report: %+v, want a permissions violation", st.Report)
		}
		return nil
	})
	a.waitReady(t, 5*time.Second)                       // reporting is not projecting: still ready
	testutil.CheckFor(t, 10*time.Second, func() error { // stderr comes through a pipe
		if !strings.Contains(a.stderr.String(), "cannot report to the status bucket") {
			return fmt.Errorf("no log line says why the agent cannot report:\n%s", a.stderr.String())
		}
		return nil
	})
	a.alive(t)
}

// TestFleetBadInput: bad labels, a status bucket that is a plain stream,
// garbage in a record and bad flags give clear errors and no crash.
func TestFleetBadInput(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	js := jetStream(t, s)
	kv := createBucket(t, js, "app", 1)
	putKey(t, kv, "conf.x", "1")

	cfg := writeAgentConfig(t, url, "", "agent: {id: \"bad id\", labels: {\"Role\": web, ok: \"a,b\"}}\nreport: {interval: 10ms}\nfiles: [{bucket: app, dir: /tmp/kvsync-never}]\n")
	_, errs, code := runKvsync(t, "validate", "-c", cfg)
	for _, want := range []string{"agent.id:", `agent.labels.Role: label key "Role"`, "agent.labels.ok: label ok: value", "report.interval: 10ms is less than 1s"} {
		if !strings.Contains(errs, want) {
			t.Errorf("validate does not say %q:\n%s", want, errs)
		}
	}
	if code != 2 {
		t.Errorf("validate: exit %d, want 2", code)
	}

	for _, args := range [][]string{
		{"wait", "--key", "k"},
		{"wait", "--bucket", "app"},
		{"status", "-l", "role"},
		{"status", "-l", "Role=x"},
		{"status", "--key", "k"},
		{"status", "--revision", "3"},
		{"nope"},
		{"status", "--status-bucket", "a.b"},
	} {
		if _, errs, code := fleetRun(t, url, args...); code != 2 {
			t.Errorf("fleet %v: exit %d, want 2: %s", args, code, errs)
		}
	}

	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "plain", Subjects: []string{"plain.>"}}); err != nil {
		t.Fatal(err)
	}
	_, errs, code = fleetRun(t, url, "status", "--status-bucket", "plain")
	if code != 1 || !strings.Contains(errs, "plain is a stream, not a KV bucket") {
		t.Errorf("status bucket that is a stream: exit %d: %s", code, errs)
	}
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "KV_fake", Subjects: []string{"fake.>"}}); err != nil {
		t.Fatal(err)
	}
	_, errs, code = fleetRun(t, url, "status", "--status-bucket", "fake")
	if code != 1 || !strings.Contains(errs, "stream KV_fake is not a KV bucket") {
		t.Errorf("status bucket whose stream is not a KV one: exit %d: %s", code, errs)
	}
	_, errs, code = fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.x", "--status-bucket", "nosuch")
	if code != 1 || !strings.Contains(errs, "status bucket nosuch not found") {
		t.Errorf("missing status bucket: exit %d: %s", code, errs)
	}

	// Garbage next to a real record: shown as invalid, ignored by wait.
	good, _ := fleetAgent(t, url, "good", "", "30s", "")
	good.waitReady(t, 20*time.Second)
	var st jetstream.KeyValue
	testutil.CheckFor(t, 10*time.Second, func() error { // the agent creates it after its first sync
		var err error
		st, err = js.KeyValue(context.Background(), "kvsync_status")
		return err
	})
	for key, garbage := range map[string]string{"junk": "\x00\xffnot json", "empty": "{}", "weird": `{"id": "w", "projections": [{"reads": {"app": ["conf.>"]}}]}`} {
		if _, err := st.Put(context.Background(), key, []byte(garbage)); err != nil {
			t.Fatal(err)
		}
	}
	out, errs, code := fleetRun(t, url, "status")
	if code != 0 || !strings.Contains(out, "invalid record junk: record junk: not a kvsync record") ||
		!strings.Contains(out, "invalid record empty") || !strings.Contains(out, "invalid record weird") || !strings.Contains(out, "good") {
		t.Errorf("fleet status with garbage: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	out, errs, code = fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.x", "--timeout", "20s")
	if code != 0 || !strings.Contains(errs, "ignoring record junk") || !strings.Contains(out, "1/1 agents") {
		t.Errorf("fleet wait with garbage: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
}

// TestFleetExample runs examples/fleet as its README says: the dev server
// and three agents; kv put --wait returns once all three have the put, and
// fleet status selects by label.
func TestFleetExample(t *testing.T) {
	dir := copyExample(t, "fleet")
	port := testutil.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	env := []string{"KVSYNC_NATS_URL=" + url, "KVSYNC_HTTP_LISTEN=127.0.0.1:0"}
	srv := startKvsync(t, run{args: []string{"dev", "-c", "server.yaml", "--listen", fmt.Sprintf("127.0.0.1:%d", port)}, dir: dir, env: env})
	testutil.CheckFor(t, 15*time.Second, func() error {
		if _, stderr, code := runWith(t, run{args: []string{"bucket", "info", "app", "-s", url}}); code != 0 {
			return fmt.Errorf("server not up: %s", stderr)
		}
		return nil
	})
	procs := []*proc{srv}
	for _, name := range []string{"web-1", "web-2", "db-1"} {
		procs = append(procs, startKvsync(t, run{args: []string{"run", "-c", name + ".yaml"}, dir: dir, env: env}))
	}
	for _, p := range procs {
		go func() {
			for range p.lines {
			}
		}()
	}
	waitRecords(t, url, 3)
	out, errs, code := runKvsync(t, "kv", "put", "app", "conf.nginx", "worker_processes 4;", "--wait", "30s", "-s", url)
	if code != 0 || !strings.Contains(out, "3/3 agents have app/conf.nginx") {
		t.Fatalf("kv put --wait: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	for _, name := range []string{"web-1", "web-2", "db-1"} {
		if b, err := os.ReadFile(filepath.Join(dir, name, "conf", "conf.nginx")); err != nil || string(b) != "worker_processes 4;" {
			t.Errorf("%s/conf/conf.nginx: %q, %v", name, b, err)
		}
	}
	st := fleetStatus(t, url, "-l", "role=web")
	if len(st.Agents) != 2 || st.Agents[0].ID != "web-1" || st.Agents[1].ID != "web-2" {
		t.Errorf("fleet status -l role=web: %+v, want web-1 and web-2", st.Agents)
	}
}

// TestFleetScale measures the status bucket with 5,000 agents' records on a
// separate nats-server process: the bucket's size, the time of fleet status
// and fleet wait over them, and the server's CPU and disk writes for one
// config change (every agent writes its record once). It is a measurement,
// not a check: it runs only with KVSYNC_FLEET_SCALE=1 and prints its figures
// (docs/SCALING.md).
func TestFleetScale(t *testing.T) {
	if os.Getenv("KVSYNC_FLEET_SCALE") == "" {
		t.Skip("set KVSYNC_FLEET_SCALE=1 to measure")
	}
	const agents = 5000
	n := testutil.StartNATSProc(t)
	url := n.URL()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	app, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "app"})
	if err != nil {
		t.Fatal(err)
	}
	// As an agent creates it: history 1, limit markers for the per-key TTL.
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "kvsync_status", History: 1, LimitMarkerTTL: 90 * time.Second}); err != nil {
		t.Fatal(err)
	}
	rev := putKey(t, app, "conf.nginx", "v1")

	// A realistic record: 4 projections (files, 2 templates, env) with an
	// action each, as the agent writes it.
	record := func(i int, rev uint64) []byte {
		at := time.Now().UTC()
		revs := map[string]uint64{"app": rev}
		type proj = map[string]any
		r := map[string]any{
			"id": fmt.Sprintf("web-%05d.eu-west-1.example.internal", i), "labels": map[string]string{"role": "web", "region": "eu-west-1", "zone": fmt.Sprintf("eu-west-1%c", 'a'+i%3)},
			"version": "v1.4.0", "started": at.Add(-time.Hour), "interval": 30, "ready": true,
			"projections": []proj{
				{"name": "conf", "kind": "files", "reads": map[string][]string{"app": {"conf.>"}}, "applied": revs, "action": proj{"revs": revs, "at": at}},
				{"name": "nginx", "kind": "template", "reads": map[string][]string{"app": {"conf.nginx", "upstreams.>"}}, "applied": revs, "action": proj{"revs": revs, "at": at}},
				{"name": "haproxy", "kind": "template", "reads": map[string][]string{"app": {"conf.haproxy", "backends.>"}}, "applied": revs, "action": proj{"revs": revs, "at": at}},
				{"name": "flags", "kind": "env", "reads": map[string][]string{"app": {"flags.>"}}, "applied": revs},
			},
		}
		b, _ := json.Marshal(r)
		return b
	}
	writeAll := func(rev uint64) time.Duration {
		start := time.Now()
		var futs []jetstream.PubAckFuture
		for i := range agents {
			m := &nats.Msg{Subject: fmt.Sprintf("$KV.kvsync_status.web-%05d.eu-west-1.example.internal", i), Data: record(i, rev)}
			f, err := js.PublishMsgAsync(m, jetstream.WithMsgTTL(90*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			futs = append(futs, f)
		}
		for _, f := range futs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				t.Fatal(err)
			}
		}
		return time.Since(start)
	}
	cpu := func() time.Duration { // the server's user+system CPU time
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n.PID()))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
		var u, s int64
		fmt.Sscan(f[11], &u)
		fmt.Sscan(f[12], &s)
		return time.Duration(u+s) * 10 * time.Millisecond // USER_HZ 100
	}
	diskWrites := func() int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", n.PID()))
		if err != nil {
			return -1
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "wchar: "); ok {
				var x int64
				fmt.Sscan(v, &x)
				return x
			}
		}
		return -1
	}
	took := writeAll(rev)
	st, _ := js.Stream(ctx, "KV_kvsync_status")
	info, _ := st.Info(ctx)
	t.Logf("%d records written in %v; stream: %d msgs, %d bytes (%.0f B per record)", agents, took, info.State.Msgs, info.State.Bytes, float64(info.State.Bytes)/agents)

	// Wall time, and the command's own CPU time (user+system), which the
	// load of a shared machine does not inflate as much.
	timed := func(args ...string) (string, string) {
		cmd := exec.Command(kvsyncBin, append(append([]string{"fleet"}, args...), "-s", url)...)
		cmd.Env = testEnv(t)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		start := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("fleet %v: %v: %s", args, err, errb.String())
		}
		d := time.Since(start)
		return fmt.Sprintf("%v wall, %v CPU", d.Round(time.Millisecond), (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Round(time.Millisecond)), out.String()
	}
	{
		skv, _ := js.KeyValue(ctx, "kvsync_status")
		start := time.Now()
		w, err := skv.WatchAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for e := range w.Updates() {
			if e == nil {
				break
			}
			n++
		}
		_ = w.Stop()
		t.Logf("in-process WatchAll of %d records to the end marker: %v", n, time.Since(start))
		start = time.Now()
		_, _, _ = fleetRun(t, url, "status", "--bucket", "nosuch-bucket", "--key", "x")
		t.Logf("a kvsync fleet command that connects and fails at once: %v", time.Since(start))
	}
	for range 2 {
		d, out := timed("status", "--bucket", "app", "--key", "conf.nginx")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		t.Logf("fleet status over %d records: %v (%d lines; %s)", agents, d, len(lines), lines[len(lines)-1])
		d, _ = timed("status", "--json")
		t.Logf("fleet status --json over %d records: %v", agents, d)
		d, out = timed("wait", "--bucket", "app", "--key", "conf.nginx", "--timeout", "60s")
		t.Logf("fleet wait over %d records, all applied: %v (%s)", agents, d, strings.TrimSpace(out))
	}

	// One config change: a put, every agent writes its record once, while
	// fleet wait watches.
	rev = putKey(t, app, "conf.nginx", "v2")
	w := startKvsync(t, run{args: []string{"fleet", "wait", "--bucket", "app", "--key", "conf.nginx", "--timeout", "120s", "-s", url}})
	time.Sleep(time.Second) // let the wait read the 5,000 old records first
	cpu0, disk0 := cpu(), diskWrites()
	start := time.Now()
	writeAll(rev)
	written := time.Since(start)
	line := w.line(t, 2*time.Minute)
	waited := time.Since(start)
	cpu1, disk1 := cpu(), diskWrites()
	t.Logf("one config change: %d record writes in %v; fleet wait done %v after the first write (%s); server CPU %v (%.1f µs per record), server wchar %.1f MiB",
		agents, written, waited, line, cpu1-cpu0, float64((cpu1-cpu0).Microseconds())/agents, float64(disk1-disk0)/(1<<20))
	info, _ = st.Info(ctx)
	var onDisk int64
	_ = filepath.Walk(n.Store(), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.Contains(p, "KV_kvsync_status") {
			onDisk += fi.Size()
		}
		return nil
	})
	t.Logf("after the change: stream %d msgs, %d bytes; KV_kvsync_status on disk %.1f MiB", info.State.Msgs, info.State.Bytes, float64(onDisk)/(1<<20))
}

// TestConfigVariablesReload: ${VAR} in a config is expanded at start and
// again on SIGHUP; a reload whose variable is unset keeps the running config
// and names the path.
func TestConfigVariablesReload(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	kv := createBucket(t, jetStream(t, s), "app", 1)
	base := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "kvsync.yaml")
	write := func(dir string) {
		body := fmt.Sprintf("nats: {url: %q}\nhttp: {listen: \"\"}\nfiles: [{bucket: app, dir: %q, fsync: false}]\n", url, dir)
		if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("${FLEET_BASE}/o-${MYHOST}")
	env := []string{"FLEET_BASE=" + base, "MYHOST=web-1"}
	if _, errs, code := runWith(t, run{args: []string{"validate", "-c", cfg}, env: env}); code != 0 {
		t.Fatalf("validate: exit %d: %s", code, errs)
	}
	_, errs, code := runWith(t, run{args: []string{"validate", "-c", cfg}, env: []string{"FLEET_BASE=" + base}})
	if code != 2 || !strings.Contains(errs, "files[0].dir: ${MYHOST} is not set") {
		t.Errorf("validate without MYHOST: exit %d: %s", code, errs)
	}
	a := startKvsync(t, run{args: []string{"run", "-c", cfg}, env: env})
	go func() {
		for range a.lines {
		}
	}()
	putKey(t, kv, "k", "v1")
	testutil.CheckFor(t, 10*time.Second, func() error {
		_, err := os.Stat(filepath.Join(base, "o-web-1", "k"))
		return err
	})

	write("${FLEET_BASE}/two-${MYHOST:-x}")
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		_, err := os.Stat(filepath.Join(base, "two-web-1", "k"))
		return err
	})

	write("${FLEET_BASE}/three-${NOT_SET_ANYWHERE}")
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		if !strings.Contains(a.stderr.String(), "files[0].dir: ${NOT_SET_ANYWHERE} is not set") {
			return fmt.Errorf("no reload error naming the path yet")
		}
		return nil
	})
	putKey(t, kv, "k2", "v")
	testutil.CheckFor(t, 10*time.Second, func() error { // the running config goes on
		_, err := os.Stat(filepath.Join(base, "two-web-1", "k2"))
		return err
	})
	if _, err := os.Stat(filepath.Join(base, "three-")); err == nil {
		t.Errorf("a folder was made from the config with an unset variable")
	}
}

// TestFleetCheckAndRollback: a check that refuses a revision and an action
// that fails with rollback: true both reach the record, and fleet wait exits
// 1 at once naming them.
func TestFleetCheckAndRollback(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()
	kv := createBucket(t, jetStream(t, s), "app", 1)
	root := t.TempDir()
	checked := startAgent(t, url, fmt.Sprintf(`agent: {id: checked, labels: {safe: check}}
report: {interval: 30s}
templates:
  - name: conf
    text: '{{ key "conf.x" }}'
    bucket: app
    dest: %q
    check: {command: ["sh", "-c", "grep -q good {{.Path}} || { echo config test failed >&2; exit 1; }"]}
`, filepath.Join(root, "checked.conf")))
	dest := filepath.Join(root, "rolled.conf")
	rolled := startAgent(t, url, fmt.Sprintf(`agent: {id: rolled, labels: {safe: rollback}}
report: {interval: 30s}
templates:
  - name: conf
    text: '{{ key "conf.x" }}'
    bucket: app
    dest: %q
    rollback: true
    on_change: {command: ["sh", "-c", "if grep -q boom %s; then echo reload failed >&2; exit 1; fi"]}
`, dest, dest))
	putKey(t, kv, "conf.x", "good") // a template that never rendered is not ready
	checked.waitReady(t, 20*time.Second)
	rolled.waitReady(t, 20*time.Second)
	waitRecords(t, url, 2)
	if out, errs, code := fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.x", "--timeout", "20s"); code != 0 {
		t.Fatalf("fleet wait: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	putKey(t, kv, "conf.x", "bad boom")
	// Each fails the wait at once; -l takes them one at a time, as the first
	// failure reported ends a wait over both.
	for _, tt := range []struct{ sel, want string }{
		{"safe=check", "1 failing: checked (conf: conf: keeping the last good file: check failed"},
		{"safe=rollback", "1 failing: rolled (conf: rejected: rolled back: action failed"},
	} {
		out, errs, code := fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.x", "-l", tt.sel, "--timeout", "50s")
		if code != 1 || strings.Contains(errs, "timed out") || !strings.Contains(errs, tt.want) {
			t.Errorf("fleet wait -l %s: exit %d, want 1 at once saying %q\nstdout: %s\nstderr: %s", tt.sel, code, tt.want, out, errs)
		}
	}
	if b, err := os.ReadFile(dest); err != nil || string(b) != "good" {
		t.Errorf("rolled back file: %q, %v; want the old bytes", b, err)
	}
	// A good value goes through on both.
	putKey(t, kv, "conf.x", "good again")
	if out, errs, code := fleetRun(t, url, "wait", "--bucket", "app", "--key", "conf.x", "--timeout", "20s"); code != 0 {
		t.Fatalf("fleet wait after a good put: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
}
