package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent"
	"github.com/kvsync/kvsync/agent/natsconn"
	"github.com/kvsync/kvsync/internal/kvkey"
)

// BucketCommand manages buckets: kvsync bucket add|info|ls|rm [BUCKET].
type BucketCommand struct{ io ioStreams }

const bucketUsage = `Usage:
  kvsync bucket add  BUCKET [--history N] [--ttl D] [--max-bytes N] [--max-value-size N]
                            [--replicas N] [--storage file|memory] [--description S]
                            [--max-consumers N] [--republish]
                            [--mirror ORIGIN [--mirror-domain D]]
                     create BUCKET; an existing bucket with the same settings is fine,
                     one with other settings is an error that names them; a
                     --max-consumers given is applied to an existing bucket;
                     --republish: republish every entry to $KVR.BUCKET.>, for
                     agents in the republish watch mode (no consumer each);
                     --mirror makes BUCKET a mirror of bucket ORIGIN (in JetStream
                     domain D), as on the leaf node of an edge site
  kvsync bucket info BUCKET [--json]    settings and status
  kvsync bucket ls   [--json]           bucket names, sorted
  kvsync bucket rm   BUCKET             delete BUCKET and every key in it

Flags:
`

// bucketSettings are the settings `bucket add` compares with an existing bucket.
type bucketSettings struct {
	history      int
	ttl          time.Duration
	maxBytes     int64
	maxValueSize int
	replicas     int
	storage      string
	description  string
	maxConsumers int
	// maxConsumersSet: --max-consumers was given (it is then applied to an
	// existing bucket, and never dropped for the account's limit).
	maxConsumersSet bool
	mirror          string // origin bucket of a mirror
	mirrorDomain    string // JetStream domain of that origin
	republish       bool
}

// Run implements command.
func (c *BucketCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("bucket", c.io.err)
	fs.Usage = func() {
		fmt.Fprint(c.io.err, bucketUsage)
		fs.PrintDefaults()
	}
	var conn connFlags
	conn.register(fs)
	var s bucketSettings
	var asJSON bool
	var timeout time.Duration
	fs.IntVar(&s.history, "history", 1, "add: values kept per key, 1..64")
	fs.DurationVar(&s.ttl, "ttl", 0, "add: how long a value lives; 0 is for ever")
	fs.Int64Var(&s.maxBytes, "max-bytes", -1, "add: size limit of the bucket in bytes; -1 is none")
	fs.IntVar(&s.maxValueSize, "max-value-size", -1, "add: size limit of one value in bytes (headers count too); -1 is none")
	fs.IntVar(&s.replicas, "replicas", 1, "add: copies kept in a cluster, 1..5")
	fs.StringVar(&s.storage, "storage", "file", "add: file or memory")
	fs.StringVar(&s.description, "description", "", "add: description of the bucket")
	fs.StringVar(&s.mirror, "mirror", "", "add: make the bucket a mirror of this bucket")
	fs.StringVar(&s.mirrorDomain, "mirror-domain", "", "add: JetStream domain of the --mirror bucket")
	fs.IntVar(&s.maxConsumers, "max-consumers", agent.DefaultMaxConsumers,
		"add: consumers the bucket's stream allows, one per watching agent; -1 leaves it to the server (1,000 by default)")
	fs.BoolVar(&s.republish, "republish", false, "add: republish every entry to $KVR.BUCKET.> (watch mode republish)")
	fs.BoolVar(&asJSON, "json", false, "info, ls: JSON output")
	fs.DurationVar(&timeout, "timeout", defaultTimeout, "time allowed to connect and for each request")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("missing subcommand; one of add, info, ls, rm")
	}
	sub, pos := pos[0], pos[1:]
	var synopsis string
	var takes []string
	switch sub {
	case "add":
		synopsis = "usage: kvsync bucket add BUCKET [--history N --ttl D --max-bytes N --max-value-size N --replicas N --storage file|memory --max-consumers N --republish --mirror B --mirror-domain D]"
		takes = []string{"history", "ttl", "max-bytes", "max-value-size", "replicas", "storage", "description", "max-consumers", "republish", "mirror", "mirror-domain"}
	case "info":
		synopsis, takes = "usage: kvsync bucket info BUCKET [--json]", []string{"json"}
	case "ls":
		synopsis, takes = "usage: kvsync bucket ls [--json]", []string{"json"}
	case "rm":
		synopsis = "usage: kvsync bucket rm BUCKET"
	default:
		return usagef("unknown subcommand %q; one of add, info, ls, rm", sub)
	}
	want := 1
	if sub == "ls" {
		want = 0
	}
	if len(pos) != want {
		return usagef("%s takes %d argument(s), got %d\n%s", sub, want, len(pos), synopsis)
	}
	var badFlag error
	fs.Visit(func(f *flag.Flag) {
		own := []string{"history", "ttl", "max-bytes", "max-value-size", "replicas", "storage", "description", "max-consumers", "republish", "mirror", "mirror-domain", "json"}
		if f.Name == "max-consumers" {
			s.maxConsumersSet = true
		}
		if slices.Contains(own, f.Name) && !slices.Contains(takes, f.Name) && badFlag == nil {
			badFlag = usagef("%s does not take --%s\n%s", sub, f.Name, synopsis)
		}
	})
	if badFlag != nil {
		return badFlag
	}
	if err := s.check(); err != nil {
		return err
	}
	if timeout <= 0 {
		return usagef("--timeout must be positive")
	}
	var name string
	if want == 1 {
		name = pos[0]
		if err := kvkey.ValidBucket(name); err != nil {
			return err
		}
	}

	refused := natsconn.NewRefusals() // see KVCommand.Run
	ctx, stop := refused.Context(ctx)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nc, js, err := connectCLI(ctx, &conn, refusalOption(refused))
	if err != nil {
		return err
	}
	defer nc.Close()
	switch sub {
	case "add":
		err = c.add(ctx, js, name, s)
	case "info":
		err = c.info(ctx, js, name, asJSON)
	case "ls":
		err = c.ls(ctx, js, asJSON)
	default:
		err = c.rm(ctx, js, name)
	}
	return explain(refused, strings.TrimSpace("bucket "+sub+" "+name), err)
}

// check reports settings no server would take, as usage errors.
func (s bucketSettings) check() error {
	switch {
	case s.history < 1 || s.history > jetstream.KeyValueMaxHistory:
		return usagef("--history %d is outside 1..%d", s.history, jetstream.KeyValueMaxHistory)
	case s.ttl < 0:
		return usagef("--ttl must not be negative")
	case s.maxBytes < -1 || s.maxBytes == 0:
		return usagef("--max-bytes %d: give a positive size, or -1 for none", s.maxBytes)
	case s.maxValueSize < -1 || s.maxValueSize == 0 || s.maxValueSize > 1<<31-1:
		return usagef("--max-value-size %d: give a positive size, or -1 for none", s.maxValueSize)
	case s.replicas < 1 || s.replicas > 5:
		return usagef("--replicas %d is outside 1..5", s.replicas)
	case s.storage != "file" && s.storage != "memory":
		return usagef("--storage %q is not file or memory", s.storage)
	case s.maxConsumers < -1 || s.maxConsumers == 0:
		return usagef("--max-consumers %d: give a positive limit, or -1 to leave it to the server", s.maxConsumers)
	case s.mirrorDomain != "" && s.mirror == "":
		return usagef("--mirror-domain goes with --mirror")
	case s.mirror != "" && kvkey.ValidBucket(s.mirror) != nil:
		return usagef("--mirror: %v", kvkey.ValidBucket(s.mirror))
	case strings.ContainsAny(s.mirrorDomain, ". *>"):
		return usagef("--mirror-domain %q is not a domain name", s.mirrorDomain)
	}
	return nil
}

func (s bucketSettings) config(name string) jetstream.KeyValueConfig {
	st := jetstream.FileStorage
	if s.storage == "memory" {
		st = jetstream.MemoryStorage
	}
	cfg := jetstream.KeyValueConfig{
		Bucket:       name,
		Description:  s.description,
		History:      uint8(s.history),
		TTL:          s.ttl,
		MaxBytes:     s.maxBytes,
		MaxValueSize: int32(s.maxValueSize),
		Replicas:     s.replicas,
		Storage:      st,
	}
	if s.mirror != "" {
		cfg.Mirror = &jetstream.StreamSource{Name: s.mirror, Domain: s.mirrorDomain}
	}
	if s.republish {
		cfg.RePublish = natsconn.RePublish(name)
	}
	return cfg
}

// differences lists the settings of have that differ from s, as
// "history 5 (asked 3)". The description counts only when one was asked for.
func (s bucketSettings) differences(have jetstream.KeyValueConfig) []string {
	var d []string
	diff := func(name string, got, asked any) {
		if fmt.Sprint(got) != fmt.Sprint(asked) {
			d = append(d, fmt.Sprintf("%s %v (asked %v)", name, got, asked))
		}
	}
	diff("history", int(have.History), s.history)
	diff("ttl", have.TTL, s.ttl)
	diff("max-bytes", have.MaxBytes, s.maxBytes)
	diff("max-value-size", int(have.MaxValueSize), s.maxValueSize)
	diff("replicas", have.Replicas, s.replicas)
	diff("storage", storageName(have.Storage), s.storage)
	if s.description != "" {
		diff("description", fmt.Sprintf("%q", have.Description), fmt.Sprintf("%q", s.description))
	}
	if s.republish && !natsconn.Republishes(have.Bucket, have.RePublish) {
		d = append(d, fmt.Sprintf("republish %s (asked %s)", natsconn.RepublishName(have.RePublish), natsconn.RepublishName(natsconn.RePublish(have.Bucket))))
	}
	return d
}

func (c *BucketCommand) add(ctx context.Context, js jetstream.JetStream, name string, s bucketSettings) error {
	// Look first: creating over an existing bucket only says "exists".
	compare := func(kv jetstream.KeyValue) error {
		st, err := kv.Status(ctx)
		if err != nil {
			return bucketError(name, err)
		}
		if d := s.differences(st.Config()); len(d) > 0 {
			return fmt.Errorf("bucket %s exists with other settings: %s", name, strings.Join(d, ", "))
		}
		have := natsconn.StreamMaxConsumers(st)
		switch {
		case s.maxConsumersSet && have != s.maxConsumers:
			if err := natsconn.SetMaxConsumers(ctx, js, name, s.maxConsumers); err != nil {
				return bucketError(name, err)
			}
			fmt.Fprintf(c.io.out, "bucket %s exists; max consumers changed from %s to %s\n", name, consumersLimit(have), consumersLimit(s.maxConsumers))
			return nil
		case !s.maxConsumersSet && have < 0:
			fmt.Fprintf(c.io.err, "note: bucket %s has no max consumers of its own: the server's default (1,000 unless configured) caps how many agents can watch it; raise it with --max-consumers N\n", name)
		}
		fmt.Fprintf(c.io.out, "bucket %s exists with the same settings\n", name)
		return nil
	}
	kv, err := js.KeyValue(ctx, name)
	if err == nil {
		return compare(kv)
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return bucketError(name, err)
	}
	mc := s.maxConsumers
	_, err = natsconn.CreateBucket(ctx, js, s.config(name), mc)
	if errors.Is(err, jetstream.ErrMaximumConsumersLimit) && !s.maxConsumersSet {
		// The account caps consumers below kvsync's default: its limit is
		// the one that counts.
		fmt.Fprintf(c.io.err, "note: the account allows fewer consumers than %d: bucket %s gets no max consumers of its own\n", mc, name)
		mc = -1
		_, err = natsconn.CreateBucket(ctx, js, s.config(name), mc)
	}
	if errors.Is(err, jetstream.ErrBucketExists) {
		// Someone else created it meanwhile.
		if kv, err = js.KeyValue(ctx, name); err != nil {
			return bucketError(name, err)
		}
		return compare(kv)
	}
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	switch {
	case s.mirror != "" && s.mirrorDomain != "":
		fmt.Fprintf(c.io.out, "bucket %s created (a mirror of %s in domain %s)\n", name, s.mirror, s.mirrorDomain)
	case s.mirror != "":
		fmt.Fprintf(c.io.out, "bucket %s created (a mirror of %s)\n", name, s.mirror)
	default:
		fmt.Fprintf(c.io.out, "bucket %s created\n", name)
	}
	return nil
}

// consumersLimit shows a max_consumers value.
func consumersLimit(n int) string {
	if n <= 0 {
		return "none (the server's default)"
	}
	return fmt.Sprint(n)
}

// bucketInfo is the JSON form of `bucket info`.
type bucketInfo struct {
	Bucket         string `json:"bucket"`
	Description    string `json:"description"`
	Values         uint64 `json:"values"`
	Bytes          uint64 `json:"bytes"`
	History        int    `json:"history"`
	TTL            string `json:"ttl"`
	MaxBytes       int64  `json:"max_bytes"`
	MaxValueSize   int32  `json:"max_value_size"`
	Replicas       int    `json:"replicas"`
	Storage        string `json:"storage"`
	Compressed     bool   `json:"compressed"`
	LimitMarkerTTL string `json:"limit_marker_ttl"`
	Stream         string `json:"stream"`
	// MaxConsumers is the stream's consumer limit, -1 when it has none of
	// its own (the server's default applies); Consumers how many it has.
	MaxConsumers int `json:"max_consumers"`
	Consumers    int `json:"consumers"`
	// Mirror is the origin of a mirror bucket, MirrorDomain its domain,
	// MirrorLag how many messages the mirror is behind it.
	Mirror       string `json:"mirror,omitempty"`
	MirrorDomain string `json:"mirror_domain,omitempty"`
	MirrorLag    uint64 `json:"mirror_lag,omitempty"`
	Republish    string `json:"republish"` // "src -> dest", "" for none
}

func (c *BucketCommand) info(ctx context.Context, js jetstream.JetStream, name string, asJSON bool) error {
	kv, err := js.KeyValue(ctx, name)
	if err != nil {
		return bucketError(name, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return bucketError(name, err)
	}
	cfg := st.Config()
	bi := bucketInfo{
		Bucket:         name,
		Description:    cfg.Description,
		Values:         st.Values(),
		Bytes:          st.Bytes(),
		History:        int(cfg.History),
		TTL:            cfg.TTL.String(),
		MaxBytes:       cfg.MaxBytes,
		MaxValueSize:   cfg.MaxValueSize,
		Replicas:       cfg.Replicas,
		Storage:        storageName(cfg.Storage),
		Compressed:     cfg.Compression,
		LimitMarkerTTL: cfg.LimitMarkerTTL.String(),
		Stream:         "KV_" + name,
		MaxConsumers:   natsconn.StreamMaxConsumers(st),
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		si := bs.StreamInfo()
		bi.Consumers = si.State.Consumers
		if m := si.Config.Mirror; m != nil {
			bi.Mirror = strings.TrimPrefix(m.Name, "KV_")
			if m.External != nil {
				bi.MirrorDomain = strings.TrimSuffix(strings.TrimPrefix(m.External.APIPrefix, "$JS."), ".API")
			}
		}
		if si.Mirror != nil {
			bi.MirrorLag = si.Mirror.Lag
		}
	}
	if cfg.RePublish != nil {
		bi.Republish = natsconn.RepublishName(cfg.RePublish)
	}
	if asJSON {
		return writeJSON(c.io.out, bi)
	}
	none := func(v string, isNone bool) string {
		if isNone {
			return v + " (none)"
		}
		return v
	}
	tw := tabwriter.NewWriter(c.io.out, 0, 4, 1, ' ', 0)
	for _, row := range [][2]string{
		{"bucket", bi.Bucket},
		{"description", bi.Description},
		{"values", fmt.Sprint(bi.Values)},
		{"bytes", fmt.Sprint(bi.Bytes)},
		{"history", fmt.Sprint(bi.History)},
		{"ttl", none(bi.TTL, cfg.TTL == 0)},
		{"max bytes", none(fmt.Sprint(bi.MaxBytes), bi.MaxBytes < 0)},
		{"max value size", none(fmt.Sprint(bi.MaxValueSize), bi.MaxValueSize < 0)},
		{"replicas", fmt.Sprint(bi.Replicas)},
		{"storage", bi.Storage},
		{"compressed", fmt.Sprint(bi.Compressed)},
		{"limit marker ttl", none(bi.LimitMarkerTTL, cfg.LimitMarkerTTL == 0)},
		{"stream", bi.Stream},
		{"max consumers", consumersLimit(bi.MaxConsumers)},
		{"consumers", fmt.Sprint(bi.Consumers)},
		{"republish", cmp.Or(bi.Republish, "none")},
	} {
		if row[0] == "stream" && bi.Mirror != "" {
			fmt.Fprintf(tw, "mirror of:\t%s\n", strings.TrimSuffix(bi.Mirror+" (domain "+bi.MirrorDomain+")", " (domain )"))
			fmt.Fprintf(tw, "mirror lag:\t%d\n", bi.MirrorLag)
		}
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

func (c *BucketCommand) ls(ctx context.Context, js jetstream.JetStream, asJSON bool) error {
	l := js.KeyValueStoreNames(ctx)
	names := []string{}
	for n := range l.Name() {
		names = append(names, n)
	}
	if err := l.Error(); err != nil {
		return fmt.Errorf("list buckets: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list buckets: %w", err)
	}
	slices.Sort(names)
	if asJSON {
		return writeJSON(c.io.out, names)
	}
	for _, n := range names {
		fmt.Fprintln(c.io.out, n)
	}
	return nil
}

func (c *BucketCommand) rm(ctx context.Context, js jetstream.JetStream, name string) error {
	if err := js.DeleteKeyValue(ctx, name); err != nil {
		return bucketError(name, err)
	}
	fmt.Fprintf(c.io.out, "bucket %s deleted\n", name)
	return nil
}

func storageName(st jetstream.StorageType) string {
	if st == jetstream.MemoryStorage {
		return "memory"
	}
	return "file"
}
