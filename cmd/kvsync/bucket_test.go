package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/testutil"
)

// kvsyncIn runs kvsync in this process and returns stdout, stderr and the
// exit code.
func kvsyncIn(args ...string) (string, string, int) {
	var out, errs bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errs)
	return out.String(), errs.String(), code
}

func TestBucketAddRepublish(t *testing.T) {
	url := testutil.RunServer(t, nil).ClientURL()

	if out, errs, code := kvsyncIn("bucket", "add", "flags", "--republish", "-s", url); code != 0 || out != "bucket flags created\n" {
		t.Fatalf("add --republish: exit %d, out %q, err %q", code, out, errs)
	}
	_, js := testutil.Connect(t, url)
	st, err := js.Stream(context.Background(), "KV_flags")
	if err != nil {
		t.Fatal(err)
	}
	rp := st.CachedInfo().Config.RePublish
	if rp == nil || rp.Source != "$KV.flags.>" || rp.Destination != "$KVR.flags.>" || rp.HeadersOnly {
		t.Fatalf("stream republish = %+v, want $KV.flags.> -> $KVR.flags.> with values", rp)
	}
	if out, errs, code := kvsyncIn("bucket", "add", "flags", "--republish", "-s", url); code != 0 || !strings.Contains(out, "same settings") {
		t.Fatalf("add --republish again: exit %d, out %q, err %q", code, out, errs)
	}

	out, _, code := kvsyncIn("bucket", "info", "flags", "-s", url)
	if code != 0 || !strings.Contains(out, "republish:") || !strings.Contains(out, "$KV.flags.> -> $KVR.flags.>") {
		t.Fatalf("info: exit %d, out %q", code, out)
	}
	out, _, _ = kvsyncIn("bucket", "info", "flags", "--json", "-s", url)
	var bi struct{ Republish string }
	if err := json.Unmarshal([]byte(out), &bi); err != nil || bi.Republish != "$KV.flags.> -> $KVR.flags.>" {
		t.Fatalf("info --json republish=%q (err %v) in %s", bi.Republish, err, out)
	}

	// A bucket without it: asking for it is a difference, named.
	if _, errs, code := kvsyncIn("bucket", "add", "plain", "-s", url); code != 0 {
		t.Fatalf("add plain: %d %s", code, errs)
	}
	out, _, _ = kvsyncIn("bucket", "info", "plain", "-s", url)
	if !strings.Contains(out, "republish:") || !strings.Contains(out, "none") {
		t.Fatalf("info of a bucket without republish: %q", out)
	}
	_, errs, code := kvsyncIn("bucket", "add", "plain", "--republish", "-s", url)
	if code != 1 || !strings.Contains(errs, "republish none (asked $KV.plain.> -> $KVR.plain.>)") {
		t.Fatalf("add --republish over a plain bucket: exit %d, err %q", code, errs)
	}
	// Only add takes it.
	if _, errs, code := kvsyncIn("bucket", "info", "plain", "--republish", "-s", url); code != 2 || !strings.Contains(errs, "does not take --republish") {
		t.Fatalf("info --republish: exit %d, err %q", code, errs)
	}
}
