package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// entry is the JSON form of a KV entry that kv get/history/watch print.
type entry struct {
	Bucket      string    `json:"bucket"`
	Key         string    `json:"key"`
	Value       *string   `json:"value"`
	ValueBase64 []byte    `json:"value_base64"`
	Revision    uint64    `json:"revision"`
	Created     time.Time `json:"created"`
	Operation   string    `json:"operation"`
}

// revision parses the revision that put/create/update/revert print.
func revision(t *testing.T, out string) uint64 {
	t.Helper()
	r, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("output %q is not a revision: %v", out, err)
	}
	return r
}

// deadURL returns a loopback URL nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "nats://" + addr
}

func TestKVPutGet(t *testing.T) {
	s := testutil.RunServer(t, nil)
	createBucket(t, jetStream(t, s), "app", 5)
	url := s.ClientURL()

	binary := make([]byte, 0, 512)
	for i := range 256 {
		binary = append(binary, byte(i))
	}
	binary = append(binary, "\r\n\x00\xff trailing newline\n"...)
	for _, tc := range []struct {
		name  string
		args  []string
		stdin []byte
		want  []byte
	}{
		{"argument", []string{"greeting", "hello world"}, nil, []byte("hello world")},
		{"stdin binary", []string{"blob", "-"}, binary, binary},
		{"stdin empty", []string{"empty", "-"}, nil, []byte{}},
		{"value after --", []string{"neg", "--", "-5"}, nil, []byte("-5")},
		{"slash and equals key", []string{"a/b=c.d", "v"}, nil, []byte("v")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"kv", "put", "-s", url, "app"}, tc.args...)
			out, errs, code := runWith(t, run{args: args, stdin: tc.stdin})
			if got, want := code, 0; got != want {
				t.Fatalf("put exit=%d, want %d; stderr: %s", got, want, errs)
			}
			rev := revision(t, out)
			got := mustKvsync(t, "kv", "get", "-s", url, "app", tc.args[0])
			if !bytes.Equal([]byte(got), tc.want) {
				t.Fatalf("get=%q, want %q", got, tc.want)
			}
			js := mustKvsync(t, "kv", "get", "--json", "-s", url, "app", tc.args[0])
			var e entry
			if err := json.Unmarshal([]byte(js), &e); err != nil {
				t.Fatalf("get --json: %v in %s", err, js)
			}
			if got, want := e.Revision, rev; got != want {
				t.Fatalf("revision=%d, want %d", got, want)
			}
			if got, want := e.Operation, "PUT"; got != want {
				t.Fatalf("operation=%q, want %q", got, want)
			}
			if got, want := e.Bucket+" "+e.Key, "app "+tc.args[0]; got != want {
				t.Fatalf("bucket key=%q, want %q", got, want)
			}
			value := e.ValueBase64
			if e.Value != nil {
				value = []byte(*e.Value)
			}
			if !bytes.Equal(value, tc.want) {
				t.Fatalf("json value=%q, want %q", value, tc.want)
			}
			if e.Created.IsZero() {
				t.Fatalf("created is zero")
			}
		})
	}
}

func TestKVGetRevision(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 5)
	ctx := context.Background()
	r1, _ := kv.Put(ctx, "k", []byte("one"))
	r2, _ := kv.Put(ctx, "k", []byte("two"))
	other, _ := kv.Put(ctx, "other", []byte("x"))
	if err := kv.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	url := s.ClientURL()
	for _, tc := range []struct {
		rev      uint64
		want     string
		code     int
		wantErrs string
	}{
		{r1, "one", 0, ""},
		{r2, "two", 0, ""},
		{other, "", 1, "not found"},
		{999, "", 1, "not found"},
	} {
		t.Run(fmt.Sprint(tc.rev), func(t *testing.T) {
			out, errs, code := runKvsync(t, "kv", "get", "app", "k", "--revision", fmt.Sprint(tc.rev), "-s", url)
			if got, want := code, tc.code; got != want {
				t.Fatalf("exit=%d, want %d; stderr: %s", got, want, errs)
			}
			if got, want := out, tc.want; got != want {
				t.Fatalf("stdout=%q, want %q", got, want)
			}
			if !strings.Contains(errs, tc.wantErrs) {
				t.Fatalf("stderr=%q, want it to contain %q", errs, tc.wantErrs)
			}
		})
	}
	// The latest value is a delete marker: get says so.
	_, errs, code := runKvsync(t, "kv", "get", "app", "k", "-s", url)
	if got, want := code, 1; got != want {
		t.Fatalf("get deleted key: exit=%d, want %d", got, want)
	}
	if !strings.Contains(errs, "key not found") {
		t.Fatalf("stderr=%q, want \"key not found\"", errs)
	}
}

func TestKVCreateUpdate(t *testing.T) {
	s := testutil.RunServer(t, nil)
	createBucket(t, jetStream(t, s), "app", 5)
	url := s.ClientURL()

	r1 := revision(t, mustKvsync(t, "kv", "create", "app", "k", "v1", "-s", url))
	_, errs, code := runKvsync(t, "kv", "create", "app", "k", "again", "-s", url)
	if got, want := code, 1; got != want {
		t.Fatalf("create existing: exit=%d, want %d", got, want)
	}
	if want := fmt.Sprintf("exists at revision %d", r1); !strings.Contains(errs, want) {
		t.Fatalf("stderr=%q, want %q", errs, want)
	}

	r2 := revision(t, mustKvsync(t, "kv", "update", "app", "k", "v2", "--revision", fmt.Sprint(r1), "-s", url))
	if r2 <= r1 {
		t.Fatalf("update revision %d is not above %d", r2, r1)
	}
	// r1 is stale now: exit 1, naming the current revision, and the value stays.
	_, errs, code = runKvsync(t, "kv", "update", "app", "k", "v3", "--revision", fmt.Sprint(r1), "-s", url)
	if got, want := code, 1; got != want {
		t.Fatalf("stale update: exit=%d, want %d; stderr: %s", got, want, errs)
	}
	if want := fmt.Sprintf("current revision is %d", r2); !strings.Contains(errs, want) {
		t.Fatalf("stderr=%q, want %q", errs, want)
	}
	if got, want := mustKvsync(t, "kv", "get", "app", "k", "-s", url), "v2"; got != want {
		t.Fatalf("after stale update get=%q, want %q", got, want)
	}
	// update from stdin
	r3 := revision(t, mustUpdateStdin(t, url, r2, "from stdin"))
	if got, want := mustKvsync(t, "kv", "get", "app", "k", "-s", url), "from stdin"; got != want {
		t.Fatalf("get=%q, want %q (revision %d)", got, want, r3)
	}
}

func mustUpdateStdin(t *testing.T, url string, rev uint64, value string) string {
	t.Helper()
	out, errs, code := runWith(t, run{args: []string{"kv", "update", "-s", url, "--revision", fmt.Sprint(rev), "app", "k", "-"}, stdin: []byte(value)})
	if code != 0 {
		t.Fatalf("update -: exit %d: %s", code, errs)
	}
	return out
}

func TestKVDelPurge(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 5)
	ctx := context.Background()
	url := s.ClientURL()
	r1, _ := kv.Put(ctx, "a", []byte("1"))
	r2, _ := kv.Put(ctx, "a", []byte("2"))
	if _, err := kv.Put(ctx, "b", []byte("1")); err != nil {
		t.Fatal(err)
	}

	// A stale guard refuses and names the current revision.
	_, errs, code := runKvsync(t, "kv", "del", "app", "a", "--revision", fmt.Sprint(r1), "-s", url)
	if got, want := code, 1; got != want {
		t.Fatalf("stale del: exit=%d, want %d", got, want)
	}
	if want := fmt.Sprintf("current revision is %d", r2); !strings.Contains(errs, want) {
		t.Fatalf("stderr=%q, want %q", errs, want)
	}
	mustKvsync(t, "kv", "del", "app", "a", "--revision", fmt.Sprint(r2), "-s", url)
	if _, err := kv.Get(ctx, "a"); err != jetstream.ErrKeyNotFound {
		t.Fatalf("get after del: err=%v, want %v", err, jetstream.ErrKeyNotFound)
	}
	// History survives a delete.
	if h, err := kv.History(ctx, "a"); err != nil || len(h) != 3 {
		t.Fatalf("history after del: %d entries, err %v; want 3", len(h), err)
	}
	// Deleting what has no value is an error.
	_, errs, code = runKvsync(t, "kv", "del", "app", "a", "-s", url)
	if got, want := code, 1; got != want {
		t.Fatalf("del deleted key: exit=%d, want %d", got, want)
	}
	if !strings.Contains(errs, "key not found") {
		t.Fatalf("stderr=%q, want \"key not found\"", errs)
	}

	mustKvsync(t, "kv", "purge", "app", "b", "-s", url)
	h, err := kv.History(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(h), 1; got != want {
		t.Fatalf("history after purge: %d entries, want %d", got, want)
	}
	if got, want := h[0].Operation(), jetstream.KeyValuePurge; got != want {
		t.Fatalf("operation after purge=%v, want %v", got, want)
	}
}

func TestKVKeys(t *testing.T) {
	s := testutil.RunServer(t, nil)
	js := jetStream(t, s)
	kv := createBucket(t, js, "app", 1)
	createBucket(t, js, "empty", 1)
	ctx := context.Background()
	url := s.ClientURL()

	// An empty bucket lists nothing, successfully.
	if got, want := mustKvsync(t, "kv", "keys", "empty", "-s", url), ""; got != want {
		t.Fatalf("keys of empty bucket=%q, want %q", got, want)
	}
	if got, want := mustKvsync(t, "kv", "keys", "empty", "--json", "-s", url), "[]\n"; got != want {
		t.Fatalf("keys --json of empty bucket=%q, want %q", got, want)
	}

	for _, k := range []string{"svc.b.port", "svc.a.port", "svc.a.host", "flags.x", "gone", "top"} {
		if _, err := kv.Put(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		filters []string
		want    []string
	}{
		{nil, []string{"flags.x", "svc.a.host", "svc.a.port", "svc.b.port", "top"}},
		{[]string{"svc.>"}, []string{"svc.a.host", "svc.a.port", "svc.b.port"}},
		{[]string{"svc.*.port"}, []string{"svc.a.port", "svc.b.port"}},
		{[]string{"flags.*", "top"}, []string{"flags.x", "top"}},
		{[]string{"nothing.>"}, nil},
	} {
		t.Run(strings.Join(tc.filters, ","), func(t *testing.T) {
			args := append([]string{"kv", "keys", "app"}, tc.filters...)
			args = append(args, "-s", url)
			want := strings.Join(tc.want, "\n")
			if want != "" {
				want += "\n"
			}
			if got := mustKvsync(t, args...); got != want {
				t.Fatalf("keys=%q, want %q", got, want)
			}
			var got []string
			if err := json.Unmarshal([]byte(mustKvsync(t, append(args, "--json")...)), &got); err != nil {
				t.Fatal(err)
			}
			if g, w := strings.Join(got, ","), strings.Join(tc.want, ","); g != w {
				t.Fatalf("keys --json=%q, want %q", g, w)
			}
		})
	}
}

func TestKVHistory(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 10)
	ctx := context.Background()
	url := s.ClientURL()
	r1, _ := kv.Put(ctx, "k", []byte("one"))
	r2, _ := kv.Put(ctx, "k", []byte("line\nbreak"))
	if err := kv.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	out := mustKvsync(t, "kv", "history", "app", "k", "-s", url)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if got, want := len(lines), 4; got != want {
		t.Fatalf("history has %d lines, want %d:\n%s", got, want, out)
	}
	for i, want := range [][]string{
		{"KEY", "REVISION", "OP", "CREATED", "LENGTH", "VALUE"},
		{"k", fmt.Sprint(r1), "PUT", "", "3", "one"},
		{"k", fmt.Sprint(r2), "PUT", "", "10", `"line\nbreak"`},
		{"k", fmt.Sprint(r2 + 1), "DELETE", "", "0"},
	} {
		f := strings.Fields(lines[i])
		if got, want := len(f), len(want); got != want {
			t.Fatalf("line %d %q has %d fields, want %d", i, lines[i], got, want)
		}
		for j, w := range want {
			if w == "" { // the time
				if _, err := time.Parse(time.RFC3339, f[j]); err != nil {
					t.Fatalf("line %d field %d: %v", i, j, err)
				}
				continue
			}
			if f[j] != w {
				t.Fatalf("line %d field %d=%q, want %q", i, j, f[j], w)
			}
		}
	}

	var es []entry
	if err := json.Unmarshal([]byte(mustKvsync(t, "kv", "history", "app", "k", "--json", "-s", url)), &es); err != nil {
		t.Fatal(err)
	}
	if got, want := len(es), 3; got != want {
		t.Fatalf("history --json has %d entries, want %d", got, want)
	}
	if got, want := *es[1].Value, "line\nbreak"; got != want {
		t.Fatalf("entry 1 value=%q, want %q", got, want)
	}
	if got, want := es[2].Operation, "DELETE"; got != want {
		t.Fatalf("entry 2 operation=%q, want %q", got, want)
	}
	if es[2].Value != nil {
		t.Fatalf("delete marker has a value: %q", *es[2].Value)
	}

	_, errs, code := runKvsync(t, "kv", "history", "app", "never", "-s", url)
	if got, want := code, 1; got != want {
		t.Fatalf("history of unknown key: exit=%d, want %d", got, want)
	}
	if !strings.Contains(errs, "key not found") {
		t.Fatalf("stderr=%q, want \"key not found\"", errs)
	}
}

func TestKVWatch(t *testing.T) {
	s := testutil.RunServer(t, nil)
	js := jetStream(t, s)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		json bool
	}{{"text", false}, {"json", true}} {
		t.Run(tc.name, func(t *testing.T) {
			kv := createBucket(t, js, tc.name, 1)
			r1, _ := kv.Put(ctx, "svc.a", []byte("before"))
			if _, err := kv.Put(ctx, "other", []byte("ignored")); err != nil {
				t.Fatal(err)
			}
			args := []string{"kv", "watch", tc.name, "svc.>", "-s", s.ClientURL()}
			if tc.json {
				args = append(args, "--json")
			}
			p := startKvsync(t, run{args: args})
			// Each watched change as "REV OP KEY [VALUE]".
			next := func() string {
				l := p.line(t, 10*time.Second)
				if !tc.json {
					return l
				}
				var e entry
				if err := json.Unmarshal([]byte(l), &e); err != nil {
					t.Fatalf("watch --json line %q: %v", l, err)
				}
				s := fmt.Sprintf("%d %s %s", e.Revision, e.Operation, e.Key)
				if e.Value != nil {
					s += " " + strings.ReplaceAll(*e.Value, "\n", `\n`)
				}
				return s
			}
			// The current value first, then the changes.
			if got, want := next(), fmt.Sprintf("%d PUT svc.a before", r1); got != want {
				t.Fatalf("first line=%q, want %q", got, want)
			}
			r2, _ := kv.Put(ctx, "svc.b", []byte("after"))
			if _, err := kv.Put(ctx, "other", []byte("not watched")); err != nil {
				t.Fatal(err)
			}
			if err := kv.Delete(ctx, "svc.a"); err != nil {
				t.Fatal(err)
			}
			if got, want := next(), fmt.Sprintf("%d PUT svc.b after", r2); got != want {
				t.Fatalf("line=%q, want %q", got, want)
			}
			if got, want := next(), fmt.Sprintf("%d DELETE svc.a", r2+2); got != want {
				t.Fatalf("line=%q, want %q", got, want)
			}
			if got, want := p.stop(t, os.Interrupt, 10*time.Second), 0; got != want {
				t.Fatalf("exit after interrupt=%d, want %d; stderr: %s", got, want, p.stderr.String())
			}
		})
	}
}

func TestKVRevert(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 10)
	ctx := context.Background()
	url := s.ClientURL()
	r1, _ := kv.Put(ctx, "k", []byte("good"))
	if _, err := kv.Put(ctx, "k", []byte("bad")); err != nil {
		t.Fatal(err)
	}
	other, _ := kv.Put(ctx, "other", []byte("x"))

	rev := revision(t, mustKvsync(t, "kv", "revert", "app", "k", "--to", fmt.Sprint(r1), "-s", url))
	e, err := kv.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(e.Value()), "good"; got != want {
		t.Fatalf("value after revert=%q, want %q", got, want)
	}
	if got, want := e.Revision(), rev; got != want {
		t.Fatalf("revision after revert=%d, want printed %d", got, want)
	}

	// A revert onto a deleted key works (guarded by the delete marker's revision).
	if err := kv.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	mustKvsync(t, "kv", "revert", "app", "k", "--to", fmt.Sprint(r1), "-s", url)
	if e, err := kv.Get(ctx, "k"); err != nil || string(e.Value()) != "good" {
		t.Fatalf("after revert of a deleted key: %v, %v", e, err)
	}

	del, _ := kv.Put(ctx, "d", []byte("x"))
	if err := kv.Delete(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, key string
		to        uint64
	}{
		{"another key's revision", "k", other},
		{"delete marker", "d", del + 1},
		{"no such revision", "k", 9999},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errs, code := runKvsync(t, "kv", "revert", "app", tc.key, "--to", fmt.Sprint(tc.to), "-s", url)
			if got, want := code, 1; got != want {
				t.Fatalf("exit=%d, want %d; stderr: %s", got, want, errs)
			}
			if want := "is not a value of this key"; !strings.Contains(errs, want) {
				t.Fatalf("stderr=%q, want %q", errs, want)
			}
		})
	}
}

// TestKVRefusedLocally: bad names fail with the rule they break, before
// anything is sent — the server URL is dead, so a connection attempt would
// show as a connect error instead.
func TestKVRefusedLocally(t *testing.T) {
	dead := deadURL(t)
	long := strings.Repeat("k", 5000)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"key with space", []string{"kv", "put", "app", "a b", "v"}, "allowed are"},
		{"key with ..", []string{"kv", "get", "app", "a..b"}, "empty token"},
		{"key with leading dot", []string{"kv", "del", "app", ".a"}, "starts or ends with '.'"},
		{"wildcard as key", []string{"kv", "put", "app", "a.*", "v"}, "allowed are"},
		{"long key", []string{"kv", "put", "app", long, "v"}, "longer than 1024"},
		{"bucket with dot", []string{"kv", "get", "my.app", "k"}, "bucket name"},
		{"bucket for bucket add", []string{"bucket", "add", "a.b"}, "bucket name"},
		{"bad filter", []string{"kv", "keys", "app", "a.>.b"}, "last token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errs, code := runKvsync(t, append(tc.args, "-s", dead)...)
			if got, want := code, 1; got != want {
				t.Fatalf("exit=%d, want %d; stderr: %s", got, want, errs)
			}
			if !strings.Contains(errs, tc.want) || strings.Contains(errs, "connect") {
				t.Fatalf("stderr=%q, want the rule %q and no connect error", errs, tc.want)
			}
		})
	}
}

func TestKVMissing(t *testing.T) {
	s := testutil.RunServer(t, nil)
	createBucket(t, jetStream(t, s), "app", 1)
	url := s.ClientURL()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bucket on get", []string{"kv", "get", "nope", "k"}, "bucket nope not found"},
		{"bucket on put", []string{"kv", "put", "nope", "k", "v"}, "bucket nope not found"},
		{"bucket on keys", []string{"kv", "keys", "nope"}, "bucket nope not found"},
		{"bucket on watch", []string{"kv", "watch", "nope"}, "bucket nope not found"},
		{"key on get", []string{"kv", "get", "app", "k"}, "key not found"},
		{"key on history", []string{"kv", "history", "app", "k"}, "key not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errs, code := runKvsync(t, append(tc.args, "-s", url)...)
			if got, want := code, 1; got != want {
				t.Fatalf("exit=%d, want %d; stderr: %s", got, want, errs)
			}
			if !strings.Contains(errs, tc.want) {
				t.Fatalf("stderr=%q, want %q", errs, tc.want)
			}
			if out != "" {
				t.Fatalf("stdout=%q, want nothing", out)
			}
		})
	}
}

// TestUsage: a bad command line exits 2 with a usage line, before connecting.
func TestUsage(t *testing.T) {
	dead := deadURL(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"kv without subcommand", []string{"kv"}, "missing subcommand"},
		{"kv unknown subcommand", []string{"kv", "fetch", "app", "k"}, "unknown subcommand"},
		{"get without key", []string{"kv", "get", "app"}, "usage: kvsync kv get"},
		{"get with extra", []string{"kv", "get", "app", "k", "x"}, "usage: kvsync kv get"},
		{"put without value", []string{"kv", "put", "app", "k"}, "usage: kvsync kv put"},
		{"keys without bucket", []string{"kv", "keys"}, "usage: kvsync kv keys"},
		{"update without revision", []string{"kv", "update", "app", "k", "v"}, "needs --revision"},
		{"revert without to", []string{"kv", "revert", "app", "k"}, "needs --to"},
		{"flag of another subcommand", []string{"kv", "put", "app", "k", "v", "--to", "3"}, "does not take --to"},
		{"unknown flag", []string{"kv", "get", "app", "k", "--nope"}, "flag provided but not defined"},
		{"bad revision", []string{"kv", "get", "app", "k", "--revision", "x"}, "invalid value"},
		{"bucket without subcommand", []string{"bucket"}, "missing subcommand"},
		{"bucket unknown subcommand", []string{"bucket", "make", "x"}, "unknown subcommand"},
		{"bucket add without name", []string{"bucket", "add"}, "usage: kvsync bucket add"},
		{"bucket ls with name", []string{"bucket", "ls", "x"}, "usage: kvsync bucket ls"},
		{"bucket rm with json", []string{"bucket", "rm", "x", "--json"}, "does not take --json"},
		{"bucket add bad history", []string{"bucket", "add", "x", "--history", "65"}, "outside 1..64"},
		{"bucket add bad storage", []string{"bucket", "add", "x", "--storage", "disk"}, "not file or memory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errs, code := runKvsync(t, append(tc.args, "-s", dead)...)
			if got, want := code, 2; got != want {
				t.Fatalf("exit=%d, want %d; stderr: %s", got, want, errs)
			}
			if !strings.Contains(errs, tc.want) {
				t.Fatalf("stderr=%q, want %q", errs, tc.want)
			}
		})
	}
	// -h is help, not an error.
	_, errs, code := runKvsync(t, "kv", "-h")
	if got, want := code, 0; got != want {
		t.Fatalf("kv -h: exit=%d, want %d", got, want)
	}
	if !strings.Contains(errs, "kvsync kv revert") {
		t.Fatalf("kv -h printed %q, want the subcommand list", errs)
	}
}

// TestConnectionSources: where the server address and credentials come from.
func TestConnectionSources(t *testing.T) {
	s := testutil.RunServer(t, func(o *server.Options) { o.Username, o.Password = "app", "s3cret" })
	url := s.ClientURL() // nats://127.0.0.1:PORT, no credentials
	_, port, _ := strings.Cut(strings.TrimPrefix(url, "nats://"), ":")
	dead := deadURL(t)

	cfgHome := t.TempDir()
	ctxDir := filepath.Join(cfgHome, "nats", "context")
	if err := os.MkdirAll(ctxDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeContext := func(name string, c map[string]any) {
		b, _ := json.Marshal(c)
		if err := os.WriteFile(filepath.Join(ctxDir, name+".json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeContext("good", map[string]any{"url": url, "user": "app", "password": "s3cret"})
	writeContext("deadurl", map[string]any{"url": dead, "user": "app", "password": "s3cret"})
	writeContext("nocreds", map[string]any{"url": url})
	xdg := "XDG_CONFIG_HOME=" + cfgHome

	// The bucket, made with credentials in the URL.
	mustKvsync(t, "bucket", "add", "app", "-s", "nats://app:s3cret@127.0.0.1:"+port)

	for _, tc := range []struct {
		name string
		args []string
		env  []string
		code int
		want string // in stderr
	}{
		{"flags after positionals", []string{"app", "k", "-s", url, "--user", "app", "--password", "s3cret"}, nil, 0, ""},
		{"flags before positionals", []string{"-s", url, "--user=app", "--password=s3cret", "app", "k"}, nil, 0, ""},
		{"NATS_URL and NATS_USER env", []string{"app", "k"}, []string{"NATS_URL=" + url, "NATS_USER=app", "NATS_PASSWORD=s3cret"}, 0, ""},
		{"KVSYNC_NATS_URL wins over NATS_URL", []string{"app", "k", "--user", "app", "--password", "s3cret"}, []string{"NATS_URL=" + dead, "KVSYNC_NATS_URL=" + url}, 0, ""},
		{"flag wins over env", []string{"app", "k", "-s", url, "--user", "app", "--password", "s3cret"}, []string{"NATS_URL=" + dead}, 0, ""},
		{"comma-separated list", []string{"app", "k", "-s", dead + ", " + url, "--user", "app", "--password", "s3cret"}, nil, 0, ""},
		{"wrong password", []string{"app", "k", "-s", url, "--user", "app", "--password", "nope"}, nil, 1, "uthorization"},
		{"--context", []string{"app", "k", "--context", "good"}, []string{xdg}, 0, ""},
		{"NATS_CONTEXT", []string{"app", "k"}, []string{xdg, "NATS_CONTEXT=good"}, 0, ""},
		{"flag URL over context URL", []string{"app", "k", "--context", "deadurl", "-s", url}, []string{xdg}, 0, ""},
		{"flag user over context creds", []string{"app", "k", "--context", "good", "--user", "app", "--password", "nope"}, []string{xdg}, 1, "uthorization"},
		{"context without creds plus flags", []string{"app", "k", "--context", "nocreds", "--user", "app", "--password", "s3cret"}, []string{xdg}, 0, ""},
		{"unknown context", []string{"app", "k", "--context", "nope"}, []string{xdg}, 1, ctxDir},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"kv", "put"}, tc.args...)
			args = append(args, "v-"+tc.name)
			_, errs, code := runWith(t, run{args: args, env: tc.env})
			if got, want := code, tc.code; got != want {
				t.Fatalf("exit=%d, want %d; stderr: %s", got, want, errs)
			}
			if !strings.Contains(errs, tc.want) {
				t.Fatalf("stderr=%q, want %q", errs, tc.want)
			}
			if tc.code != 0 {
				return
			}
			got := mustKvsync(t, "kv", "get", "app", "k", "-s", "nats://app:s3cret@127.0.0.1:"+port)
			if want := "v-" + tc.name; got != want {
				t.Fatalf("value=%q, want %q", got, want)
			}
		})
	}

	// The context selected with `nats context select` is the default.
	if err := os.WriteFile(filepath.Join(cfgHome, "nats", "context.txt"), []byte("good\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errs, code := runWith(t, run{args: []string{"kv", "get", "app", "k"}, env: []string{xdg}})
	if code != 0 || out == "" {
		t.Fatalf("selected context: exit %d, stdout %q, stderr %s", code, out, errs)
	}
}

// TestDeadServer: a one-shot command against a server that is not there fails
// with exit 1 and says what it could not reach, instead of retrying for ever.
func TestDeadServer(t *testing.T) {
	dead := deadURL(t)
	for _, args := range [][]string{
		{"kv", "get", "app", "k", "-s", dead},
		{"kv", "watch", "app", "-s", dead},
		{"bucket", "ls", "-s", dead},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			_, errs, code := runKvsync(t, args...)
			if got, want := code, 1; got != want {
				t.Fatalf("exit=%d, want %d; stderr: %s", got, want, errs)
			}
			if want := "connect to " + dead; !strings.Contains(errs, want) {
				t.Fatalf("stderr=%q, want %q", errs, want)
			}
		})
	}
}

func TestBucket(t *testing.T) {
	s := testutil.RunServer(t, nil)
	url := s.ClientURL()

	if got, want := mustKvsync(t, "bucket", "ls", "-s", url), ""; got != want {
		t.Fatalf("ls on a new server=%q, want %q", got, want)
	}
	add := []string{"bucket", "add", "cfg", "--history", "5", "--ttl", "1h", "--max-bytes", "1048576",
		"--max-value-size", "4096", "--storage", "memory", "-s", url}
	if got, want := mustKvsync(t, add...), "bucket cfg created\n"; got != want {
		t.Fatalf("add=%q, want %q", got, want)
	}
	// Same settings again: fine.
	if got, want := mustKvsync(t, add...), "bucket cfg exists with the same settings\n"; got != want {
		t.Fatalf("add again=%q, want %q", got, want)
	}
	// Other settings: refused, naming each difference.
	_, errs, code := runKvsync(t, "bucket", "add", "cfg", "--history", "3", "--storage", "memory",
		"--ttl", "1h", "--max-bytes", "1048576", "--max-value-size", "1024", "-s", url)
	if got, want := code, 1; got != want {
		t.Fatalf("add with other settings: exit=%d, want %d", got, want)
	}
	for _, want := range []string{"history 5 (asked 3)", "max-value-size 4096 (asked 1024)"} {
		if !strings.Contains(errs, want) {
			t.Fatalf("stderr=%q, want %q", errs, want)
		}
	}
	if strings.Contains(errs, "ttl") || strings.Contains(errs, "storage") {
		t.Fatalf("stderr=%q names settings that are the same", errs)
	}
	mustKvsync(t, "bucket", "add", "app", "-s", url)
	mustKvsync(t, "kv", "put", "app", "k", "hello", "-s", url)

	if got, want := mustKvsync(t, "bucket", "ls", "-s", url), "app\ncfg\n"; got != want {
		t.Fatalf("ls=%q, want %q", got, want)
	}
	var names []string
	if err := json.Unmarshal([]byte(mustKvsync(t, "bucket", "ls", "--json", "-s", url)), &names); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(names, ","), "app,cfg"; got != want {
		t.Fatalf("ls --json=%q, want %q", got, want)
	}

	info := mustKvsync(t, "bucket", "info", "cfg", "-s", url)
	for _, want := range []string{"bucket:", "cfg", "history:", "5", "ttl:", "1h0m0s", "storage:", "memory", "max value size:", "4096"} {
		if !strings.Contains(info, want) {
			t.Fatalf("info=%q, want %q in it", info, want)
		}
	}
	var bi struct {
		Bucket       string `json:"bucket"`
		Values       uint64 `json:"values"`
		Bytes        uint64 `json:"bytes"`
		History      int    `json:"history"`
		TTL          string `json:"ttl"`
		MaxBytes     int64  `json:"max_bytes"`
		MaxValueSize int32  `json:"max_value_size"`
		Replicas     int    `json:"replicas"`
		Storage      string `json:"storage"`
	}
	if err := json.Unmarshal([]byte(mustKvsync(t, "bucket", "info", "app", "--json", "-s", url)), &bi); err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprintf("%s %d %d %s %d %d %d %s", bi.Bucket, bi.Values, bi.History, bi.TTL, bi.MaxBytes, bi.MaxValueSize, bi.Replicas, bi.Storage),
		"app 1 1 0s -1 -1 1 file"; got != want {
		t.Fatalf("info --json=%q, want %q", got, want)
	}
	if bi.Bytes == 0 {
		t.Fatalf("info --json: bytes is 0 with one value")
	}

	if got, want := mustKvsync(t, "bucket", "rm", "cfg", "-s", url), "bucket cfg deleted\n"; got != want {
		t.Fatalf("rm=%q, want %q", got, want)
	}
	for _, args := range [][]string{{"bucket", "rm", "cfg"}, {"bucket", "info", "cfg"}} {
		_, errs, code := runKvsync(t, append(args, "-s", url)...)
		if got, want := code, 1; got != want {
			t.Fatalf("%v on a removed bucket: exit=%d, want %d", args, got, want)
		}
		if want := "bucket cfg not found"; !strings.Contains(errs, want) {
			t.Fatalf("stderr=%q, want %q", errs, want)
		}
	}
	if got, want := mustKvsync(t, "bucket", "ls", "-s", url), "app\n"; got != want {
		t.Fatalf("ls after rm=%q, want %q", got, want)
	}
}
