package natsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

func TestProvisionCreatesAndReportsDifferences(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, js := testutil.Connect(t, s.ClientURL())
	defer nc.Close()
	logs := &testutil.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	ctx := context.Background()
	buckets := defaulted(BucketConfig{Name: "made", History: 5, TTL: time.Hour, MaxValueSize: 4096})
	if err := Provision(ctx, js, buckets, logger); err != nil {
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
	buckets[0].History = 10
	if err := Provision(ctx, js, buckets, logger); err != nil {
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

// TestBucketStreamConfigMatchesLibrary: a bucket made by CreateBucket has the
// stream the library's CreateKeyValue makes, but for its name and the
// consumer limit.
func TestBucketStreamConfigMatchesLibrary(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, js := testutil.Connect(t, s.ClientURL())
	defer nc.Close()
	ctx := context.Background()
	for i, cfg := range []jetstream.KeyValueConfig{
		{},
		{History: 5, TTL: time.Hour, MaxBytes: 1 << 20, MaxValueSize: 4096, Description: "d"},
		{TTL: 30 * time.Second, Storage: jetstream.MemoryStorage, Compression: true},
		{LimitMarkerTTL: time.Second, Metadata: map[string]string{"k": "v"}},
		{RePublish: &jetstream.RePublish{Source: ">", Destination: "repub.>"}},
		{Mirror: &jetstream.StreamSource{Name: "lib0"}},
	} {
		lib, ours := cfg, cfg
		lib.Bucket, ours.Bucket = fmt.Sprintf("lib%d", i), fmt.Sprintf("ours%d", i)
		if _, err := js.CreateKeyValue(ctx, lib); err != nil {
			t.Fatalf("%d: library: %v", i, err)
		}
		if _, err := CreateBucket(ctx, js, ours, 77); err != nil {
			t.Fatalf("%d: CreateBucket: %v", i, err)
		}
		get := func(name string) jetstream.StreamConfig {
			st, err := js.Stream(ctx, "KV_"+name)
			if err != nil {
				t.Fatal(err)
			}
			c := st.CachedInfo().Config
			c.Name, c.Subjects = "", nil
			if c.RePublish != nil {
				c.RePublish = &jetstream.RePublish{Source: c.RePublish.Source, HeadersOnly: c.RePublish.HeadersOnly}
			}
			return c
		}
		got, want := get(ours.Bucket), get(lib.Bucket)
		if got.MaxConsumers != 77 {
			t.Errorf("%d: max_consumers=%d, want 77", i, got.MaxConsumers)
		}
		got.MaxConsumers = want.MaxConsumers
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%d: stream config\n got %+v\nwant %+v", i, got, want)
		}
	}
	if _, err := CreateBucket(ctx, js, jetstream.KeyValueConfig{Bucket: "ours1"}, 77); !errors.Is(err, jetstream.ErrBucketExists) {
		t.Errorf("CreateBucket over an existing bucket: %v, want ErrBucketExists", err)
	}
	if _, err := CreateBucket(ctx, js, jetstream.KeyValueConfig{Bucket: "bad name"}, 77); err == nil {
		t.Errorf("CreateBucket with a bad name: no error")
	}
}

// TestProvisionMaxConsumers: a new bucket gets the configured limit (or the
// default); an existing one gets a configured limit applied and is left
// alone without one.
func TestProvisionMaxConsumers(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, js := testutil.Connect(t, s.ClientURL())
	defer nc.Close()
	logs := &testutil.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	ctx := context.Background()
	maxc := func(bucket string) int {
		st, err := js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().Config.MaxConsumers
	}
	buckets := defaulted(BucketConfig{Name: "dflt"}, BucketConfig{Name: "set", MaxConsumers: 3}, BucketConfig{Name: "none", MaxConsumers: -1})
	for _, b := range buckets {
		if ps := b.Validate(); len(ps) != 0 {
			t.Fatalf("valid max_consumers refused: %+v", ps)
		}
	}
	if err := Provision(ctx, js, buckets, logger); err != nil {
		t.Fatal(err)
	}
	for b, want := range map[string]int{"dflt": DefaultMaxConsumers, "set": 3, "none": -1} {
		if got := maxc(b); got != want {
			t.Errorf("%s: max_consumers=%d, want %d", b, got, want)
		}
	}

	// A bucket made elsewhere without a limit: left alone and reported,
	// unless the config sets one.
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "old"}); err != nil {
		t.Fatal(err)
	}
	buckets = defaulted(BucketConfig{Name: "old"})
	if err := Provision(ctx, js, buckets, logger); err != nil {
		t.Fatal(err)
	}
	if got := maxc("old"); got != -1 {
		t.Errorf("old: max_consumers changed to %d without a configured one", got)
	}
	if !strings.Contains(logs.String(), "no max_consumers of its own") {
		t.Errorf("the missing limit is not reported; log:\n%s", logs)
	}
	buckets[0].MaxConsumers = 5000
	if err := Provision(ctx, js, buckets, logger); err != nil {
		t.Fatal(err)
	}
	if got := maxc("old"); got != 5000 {
		t.Errorf("old: max_consumers=%d, want 5000 as configured", got)
	}
	if !strings.Contains(logs.String(), "bucket max_consumers changed") || !strings.Contains(logs.String(), "to=5000") {
		t.Errorf("the change is not logged; log:\n%s", logs)
	}

	// A negative limit other than -1 is a config error.
	// (agent's TestConfigNamesBucketProblems checks the path in the config.)
	bad := defaulted(BucketConfig{Name: "x", MaxConsumers: -2})[0]
	if ps := bad.Validate(); len(ps) != 1 || ps[0].Path != ".max_consumers" {
		t.Errorf("max_consumers -2: %+v, want a problem of .max_consumers", ps)
	}
}

// TestProvisionUnderAccountLimit: an account that allows fewer consumers than
// kvsync's default gets buckets without a limit of their own (said at WARN);
// a configured limit above the account's is an error naming the bucket.
func TestProvisionUnderAccountLimit(t *testing.T) {
	s := testutil.RunServer(t, nil)
	if err := s.GlobalAccount().UpdateJetStreamLimits(map[string]server.JetStreamAccountLimits{
		"": {MaxConsumers: 50, MaxMemory: -1, MaxStore: -1, MaxStreams: -1, MaxAckPending: -1},
	}); err != nil {
		t.Fatal(err)
	}
	nc, js := testutil.Connect(t, s.ClientURL())
	defer nc.Close()
	logs := &testutil.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	ctx := context.Background()
	buckets := defaulted(BucketConfig{Name: "dflt"})
	if err := Provision(ctx, js, buckets, logger); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_dflt")
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.MaxConsumers; got != -1 {
		t.Errorf("max_consumers=%d, want -1 (the account's limit counts)", got)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "account's consumer limit") {
		t.Errorf("not said at WARN; log:\n%s", logs)
	}
	buckets = defaulted(BucketConfig{Name: "big", MaxConsumers: 100})
	err = Provision(ctx, js, buckets, logger)
	if err == nil || !strings.Contains(err.Error(), "create bucket big") {
		t.Errorf("max_consumers over the account's limit: %v, want an error naming the bucket", err)
	}
	if _, err := js.Stream(ctx, "KV_big"); err == nil {
		t.Errorf("bucket big was created")
	}
}

// TestProvisionRepublish: a bucket created with republish: true republishes
// to $KVR.<bucket>.>; an existing one without it is reported, not changed.
func TestProvisionRepublish(t *testing.T) {
	s := testutil.RunServer(t, nil)
	nc, js := testutil.Connect(t, s.ClientURL())
	defer nc.Close()
	logs := &testutil.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	ctx := context.Background()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "plain"}); err != nil {
		t.Fatal(err)
	}
	buckets := defaulted(BucketConfig{Name: "flags", Republish: true}, BucketConfig{Name: "plain", Republish: true})
	if err := Provision(ctx, js, buckets, logger); err != nil {
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

// defaulted returns buckets with their defaults filled, as the agent's
// config has them.
func defaulted(buckets ...BucketConfig) []BucketConfig {
	for i := range buckets {
		buckets[i].Default()
	}
	return buckets
}
