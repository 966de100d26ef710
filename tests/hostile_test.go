package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kvsync/kvsync/internal/testutil"
)

// publishRaw publishes value on the stream subject of key, bypassing every
// client-side key check, and reports whether the stream stored it.
func publishRaw(t testing.TB, nc *nats.Conn, bucket, key string, value []byte) bool {
	t.Helper()
	msg, err := nc.Request("$KV."+bucket+"."+key, value, 2*time.Second)
	if err != nil {
		return false // refused by the server or by the client library
	}
	var ack struct {
		Seq   uint64          `json:"seq"`
		Error json.RawMessage `json:"error"`
	}
	return json.Unmarshal(msg.Data, &ack) == nil && ack.Error == nil && ack.Seq > 0
}

// TestHostileKeys: keys published raw on the stream subjects, which no KV
// client would send, never write outside the projection folders, never crash
// the agent, are counted in kvsync_rejected_keys_total, and valid keys keep
// flowing.
func TestHostileKeys(t *testing.T) {
	s := testutil.RunServer(t, nil)
	js := jetStream(t, s)
	kv := createBucket(t, js, "app", 1)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	root := t.TempDir()
	box := filepath.Join(root, "box") // everything the agent writes is under box
	flat, tree := filepath.Join(box, "flat"), filepath.Join(box, "tree")
	envFile, dest := filepath.Join(box, "app.env"), filepath.Join(box, "keys.txt")
	a := startAgent(t, s.ClientURL(), fmt.Sprintf(`files:
  - {name: flat, bucket: app, dir: %q}
  - {name: tree, bucket: app, dir: %q, layout: tree}
templates:
  - {name: list, bucket: app, dest: %q, text: '{{ range keys ">" }}{{ .Key | quote }}{{ "\n" }}{{ end }}'}
env:
  - {name: env, bucket: app, file: %q}
`, flat, tree, dest, envFile))
	if _, err := kv.Put(context.Background(), "before", []byte("ok")); err != nil {
		t.Fatal(err)
	}
	a.waitReady(t, 15*time.Second)
	waitFile(t, filepath.Join(flat, "before"), []byte("ok"), time.Now(), 5*time.Second)
	rejectedBefore := a.metric(t, "kvsync_rejected_keys_total", `projection="flat"`)

	// (1) Keys that must never become a path: traversal, absolute, reserved,
	// too long. Some the server itself refuses; the rest must be rejected.
	escaping := []string{
		"..", "../x", "a/../../x", "a/../../../etc/kvsync-hostile", "/etc/kvsync-hostile",
		"//etc/kvsync-hostile", "..data", "..data/x", "a/..data", ".kvsync", ".kvsync/manifest",
		".kvsync-tmp-1", "a/.kvsync/manifest", strings.Repeat("s", 300), strings.Repeat("k", 2048),
		"a\\..\\..\\x", "a/\x00/b", "x/", "a//b", "./x", "a/./b",
	}
	// (2) Keys that are odd but may map to a name inside the folder.
	odd := []string{"é/ü", "日本語", "a\x01b", "a\x7fb", "a\\b", "ctl\x1b[31m", "a=b", "-rf"}
	var stored, storedEscaping []string
	for i, k := range append(append([]string{}, escaping...), odd...) {
		if publishRaw(t, nc, "app", k, []byte("hostile "+k)) {
			stored = append(stored, k)
			if i < len(escaping) {
				storedEscaping = append(storedEscaping, k)
			}
		}
	}
	if len(storedEscaping) == 0 {
		t.Fatalf("the server stored none of the escaping keys: the test tests nothing")
	}
	short := make([]string, len(stored))
	for i, k := range stored {
		short[i] = clip([]byte(k))
	}
	t.Logf("the server stored %d of %d hostile keys: %q", len(stored), len(escaping)+len(odd), short)

	// Valid keys keep flowing after them.
	if _, err := kv.Put(context.Background(), "after", []byte("still ok")); err != nil {
		t.Fatal(err)
	}
	waitFile(t, filepath.Join(flat, "after"), []byte("still ok"), time.Now(), 5*time.Second)
	waitFile(t, filepath.Join(tree, "after"), []byte("still ok"), time.Now(), 5*time.Second)
	testutil.CheckFor(t, 5*time.Second, func() error {
		got := a.metric(t, "kvsync_rejected_keys_total", `projection="flat"`)
		if want := rejectedBefore + float64(len(storedEscaping)); got < want {
			return fmt.Errorf("kvsync_rejected_keys_total{projection=\"flat\"} = %v, want at least %v", got, want)
		}
		return nil
	})
	a.alive(t)

	// Nothing outside box; nothing at the absolute targets.
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root && p != box && !strings.HasPrefix(p, box+string(filepath.Separator)) {
			return fmt.Errorf("%s was written outside %s", p, box)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/etc/kvsync-hostile", filepath.Join(root, "x"), filepath.Join(box, "x")} {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s exists: a key escaped", p)
		}
	}
	// The projections' own state is intact: the manifest was not overwritten
	// by a key, and the reserved names hold no key's value.
	for _, dir := range []string{flat, tree} {
		b, err := os.ReadFile(filepath.Join(dir, ".kvsync", "manifest"))
		if err != nil || bytes.Contains(b, []byte("hostile")) {
			t.Fatalf("%s manifest = %q, %v", dir, clip(b), err)
		}
		for _, name := range []string{"..data", ".kvsync-tmp-1"} {
			if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
				t.Fatalf("%s/%s holds %q: a reserved name was written", dir, name, clip(b))
			}
		}
	}
	// Every file a key produced is a regular file inside its folder.
	for _, dir := range []string{flat, tree} {
		files, err := dirState(dir)
		if err != nil {
			t.Fatal(err)
		}
		for p := range files {
			if strings.Contains(p, "..") {
				t.Fatalf("%s: file %q", dir, p)
			}
		}
	}
	// /status is published once the owner has finished the whole batch
	// (every projection), which may be a moment after the flat projection
	// counted the keys.
	testutil.CheckFor(t, 5*time.Second, func() error {
		rejected := a.status(t).projection("flat").Rejected
		if got, want := len(rejected), len(storedEscaping); got < want {
			return fmt.Errorf("/status lists %d rejected keys for flat, want at least %d", got, want)
		}
		return nil
	})
}

// TestHostileValues: values of the largest size the server takes, binary
// values and invalid UTF-8 go through files, env and templates intact; a NUL
// byte, which no environment can carry, is reported, not projected.
func TestHostileValues(t *testing.T) {
	s := testutil.RunServer(t, nil)
	js := jetStream(t, s)
	kv := createBucket(t, js, "app", 1)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	root := t.TempDir()
	dir, envFile, dest := filepath.Join(root, "files"), filepath.Join(root, "app.env"), filepath.Join(root, "out.bin")
	a := startAgent(t, s.ClientURL(), fmt.Sprintf(`files:
  - {name: files, bucket: app, keys: ["f.>"], strip_prefix: "f.", dir: %q}
templates:
  - {name: tmpl, bucket: app, dest: %q, text: '{{ key "e.BIN" }}|{{ key "e.UTF" }}'}
env:
  - {name: env, bucket: app, keys: ["e.>"], strip_prefix: "e.", file: %q}
`, dir, dest, envFile))
	a.waitNeverRendered(t, 15*time.Second, "tmpl") // its keys come below

	var bin []byte
	for i := 1; i < 256; i++ {
		if i != '\'' {
			bin = append(bin, byte(i))
		}
	}
	invalid := []byte("\xff\xfe\xc3\x28 not utf-8 \xed\xa0\x80")
	maxPayload := int(nc.MaxPayload()) - 1024 // headers and subject travel too
	big := bytes.Repeat([]byte{0, 1, 2, 0xff}, maxPayload/4)
	for k, v := range map[string][]byte{
		"f.big": big, "f.bin": bin, "f.empty": {},
		"e.BIN": bin, "e.UTF": invalid, "e.NUL": []byte("a\x00b"), "e.OK": []byte("fine"),
	} {
		if _, err := kv.Put(context.Background(), k, v); err != nil {
			t.Fatalf("put %s (%d bytes): %v", k, len(v), err)
		}
	}
	waitFile(t, filepath.Join(dir, "big"), big, time.Now(), 10*time.Second)
	waitFile(t, filepath.Join(dir, "bin"), bin, time.Now(), 5*time.Second)
	waitFile(t, filepath.Join(dir, "empty"), []byte{}, time.Now(), 5*time.Second)
	want := append(append(append([]byte{}, bin...), '|'), invalid...)
	waitFile(t, dest, want, time.Now(), 5*time.Second)
	a.waitReady(t, 5*time.Second)

	// The dotenv file carries the binary and invalid UTF-8 values through a
	// shell intact, and leaves out the value with a NUL byte.
	testutil.CheckFor(t, 5*time.Second, func() error {
		b, err := os.ReadFile(envFile)
		if err != nil {
			return err
		}
		if !bytes.Contains(b, []byte("OK='fine'")) {
			return fmt.Errorf("%s has no OK='fine':\n%q", envFile, b)
		}
		return nil
	})
	for name, v := range map[string][]byte{"BIN": bin, "UTF": invalid, "OK": []byte("fine")} {
		cmd := exec.Command("sh", "-c", `. "$1" && eval "printf '%s' \"\$$2\""`, "sh", envFile, name)
		got, err := cmd.Output()
		if err != nil {
			t.Fatalf("source %s: %v", envFile, err)
		}
		if !bytes.Equal(got, v) {
			t.Fatalf("$%s through a shell = %q, want %q", name, got, v)
		}
	}
	b, _ := os.ReadFile(envFile)
	if bytes.Contains(b, []byte("NUL=")) {
		t.Fatalf("the value with a NUL byte was projected:\n%q", b)
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		if got := a.status(t).projection("env").Rejected; len(got) != 1 || !strings.Contains(got[0], "NUL") {
			return fmt.Errorf("env rejected = %q, want the NUL key reported", got)
		}
		return nil
	})
	a.alive(t)
}

// TestHostileTemplateOutput: a template whose output would be gigabytes stops
// at max_output_size; the last good file stays, the error is in /status, and
// the agent keeps running and projecting.
func TestHostileTemplateOutput(t *testing.T) {
	s := testutil.RunServer(t, nil)
	kv := createBucket(t, jetStream(t, s), "app", 1)
	root := t.TempDir()
	dest, dir := filepath.Join(root, "huge.conf"), filepath.Join(root, "files")
	put := func(k string, v []byte) {
		t.Helper()
		if _, err := kv.Put(context.Background(), k, v); err != nil {
			t.Fatal(err)
		}
	}
	put("blob", []byte("x"))
	put("f.one", []byte("1"))
	// Once blob is 64 KiB, the template would write 10 000 x 10 000 copies of
	// it: 6.4 TB. max_output_size is 1 MiB.
	a := startAgent(t, s.ClientURL(), fmt.Sprintf(`files:
  - {name: files, bucket: app, keys: ["f.>"], strip_prefix: "f.", dir: %q}
templates:
  - name: huge
    bucket: app
    dest: %q
    max_output_size: 1048576
    text: '{{ $b := key "blob" }}{{ if lt (len $b) 2 }}small{{ else }}{{ range until 10000 }}{{ range until 10000 }}{{ $b }}{{ end }}{{ end }}{{ end }}'
`, dir, dest))
	a.waitReady(t, 15*time.Second)
	waitFile(t, dest, []byte("small"), time.Now(), 5*time.Second)

	put("blob", bytes.Repeat([]byte("y"), 64<<10))
	testutil.CheckFor(t, 30*time.Second, func() error {
		a.alive(t)
		if got := a.status(t).projection("huge").LastError; !strings.Contains(got, "huge") {
			return fmt.Errorf("huge last_error = %q, want a render error", got)
		}
		return nil
	})
	if got, err := os.ReadFile(dest); err != nil || string(got) != "small" {
		t.Fatalf("dest = %q, %v; want the last good file kept", clip(got), err)
	}
	put("f.two", []byte("2"))
	waitFile(t, filepath.Join(dir, "two"), []byte("2"), time.Now(), 5*time.Second)
	rss := a.metric(t, "process_resident_memory_bytes")
	t.Logf("agent RSS after the bounded render: %.0f MiB", rss/(1<<20))
	if rss > 1<<30 {
		t.Fatalf("agent RSS %.0f MiB: the render was not bounded", rss/(1<<20))
	}
	a.alive(t)
}
