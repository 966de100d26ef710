package agent

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestProvisionCreatesAndReportsDifferences(t *testing.T) {
	s := testServer(t)
	nc, js := testJS(t, s.ClientURL())
	defer nc.Close()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	ctx := context.Background()
	cfg := Config{Buckets: []BucketConfig{{Name: "made", History: 5, TTL: time.Hour, MaxValueSize: 4096}}}
	cfg.Default()
	if err := provision(ctx, js, cfg.Buckets, logger); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, "made")
	if err != nil {
		t.Fatalf("bucket not created: %v", err)
	}
	st, _ := kv.Status(ctx)
	if got, want := st.History(), int64(5); got != want {
		t.Errorf("history=%d, want %d", got, want)
	}
	if got, want := st.TTL(), time.Hour; got != want {
		t.Errorf("ttl=%v, want %v", got, want)
	}

	// Existing with other settings: reported, left as it is.
	cfg.Buckets[0].History = 10
	if err := provision(ctx, js, cfg.Buckets, logger); err != nil {
		t.Fatal(err)
	}
	st, _ = kv.Status(ctx)
	if got, want := st.History(), int64(5); got != want {
		t.Errorf("history changed to %d, want it left at %d", got, want)
	}
	if !strings.Contains(logs.String(), "history 5 (config 10)") {
		t.Errorf("difference not reported; log:\n%s", logs)
	}
}

func TestProvisionRepublish(t *testing.T) {
	s := testServer(t)
	nc, js := testJS(t, s.ClientURL())
	defer nc.Close()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	ctx := context.Background()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "plain"}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Buckets: []BucketConfig{{Name: "flags", Republish: true}, {Name: "plain", Republish: true}}}
	cfg.Default()
	if err := provision(ctx, js, cfg.Buckets, logger); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_flags")
	if err != nil {
		t.Fatal(err)
	}
	if rp := st.CachedInfo().Config.RePublish; !Republishes("flags", rp) {
		t.Fatalf("created bucket republishes %s, want $KV.flags.> -> $KVR.flags.>", RepublishName(rp))
	}
	// An existing bucket without it is reported and left as it is.
	if !strings.Contains(logs.String(), "republish none (config $KVR.plain.>)") {
		t.Errorf("missing republish not reported; log:\n%s", logs)
	}
	if st, _ := js.Stream(ctx, "KV_plain"); st.CachedInfo().Config.RePublish != nil {
		t.Error("existing bucket was changed")
	}
}
