package natsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// DefaultMaxConsumers is the consumer limit kvsync gives the buckets it
// creates when the config or the command line says nothing. nats-server 2.15
// allows 1,000 consumers per stream unless the stream sets a positive limit
// (or the server's jetstream { limits { default_max_consumers } } does), and
// every agent watching a bucket holds one consumer on it. A consumer costs
// the server about 60-75 KiB, so 10,000 consumers are about 700 MiB on each
// server that holds the bucket.
const DefaultMaxConsumers = 10_000

// Provision creates every configured bucket that is missing, with the
// consumer limit of the config (DefaultMaxConsumers when it says nothing). An
// existing bucket whose settings differ is reported at WARN and left as it
// is, with one exception: a max_consumers set in the config is applied to an
// existing bucket (logged at INFO), since that is the one setting a growing
// fleet needs changed on a live bucket.
func Provision(ctx context.Context, js jetstream.JetStream, buckets []BucketConfig, logger *slog.Logger) error {
	for _, b := range buckets {
		want := kvConfig(b)
		kv, err := js.KeyValue(ctx, b.Name)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			mc := maxConsumers(b)
			_, err := CreateBucket(ctx, js, want, mc)
			if errors.Is(err, jetstream.ErrMaximumConsumersLimit) && b.MaxConsumers == 0 {
				// The account caps consumers below kvsync's default: the
				// account's limit is the one that counts.
				logger.Warn("the account's consumer limit is below kvsync's default: creating the bucket without a max_consumers of its own",
					"bucket", b.Name, "default", mc)
				mc = -1
				_, err = CreateBucket(ctx, js, want, mc)
			}
			if err != nil {
				return fmt.Errorf("create bucket %s: %w", b.Name, err)
			}
			logger.Info("bucket created", "bucket", b.Name, "history", b.History, "ttl", b.TTL, "replicas", b.Replicas, "max_consumers", mc)
			continue
		}
		if err != nil {
			return fmt.Errorf("bucket %s: %w", b.Name, err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			return fmt.Errorf("bucket %s status: %w", b.Name, err)
		}
		if diff := bucketDiff(want, st); diff != "" {
			logger.Warn("bucket exists with other settings; leaving it as it is", "bucket", b.Name, "differences", diff)
		}
		have := StreamMaxConsumers(st)
		switch {
		case b.MaxConsumers != 0 && have != b.MaxConsumers:
			if err := SetMaxConsumers(ctx, js, b.Name, b.MaxConsumers); err != nil {
				return fmt.Errorf("bucket %s: %w", b.Name, err)
			}
			logger.Info("bucket max_consumers changed, as the config says", "bucket", b.Name, "from", have, "to", b.MaxConsumers)
		case b.MaxConsumers == 0 && have <= 0:
			logger.Info("bucket has no max_consumers of its own: the server's default (1,000 per stream unless configured) caps how many agents can watch it; set max_consumers in its buckets entry to have kvsync raise it",
				"bucket", b.Name)
		}
	}
	return nil
}

// maxConsumers is the consumer limit a new bucket gets: the configured one,
// or DefaultMaxConsumers.
func maxConsumers(b BucketConfig) int {
	if b.MaxConsumers == 0 {
		return DefaultMaxConsumers
	}
	return b.MaxConsumers
}

// StreamMaxConsumers is the max_consumers of a bucket's stream (-1 when it
// has none of its own, or the status does not say).
func StreamMaxConsumers(st jetstream.KeyValueStatus) int {
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		if mc := bs.StreamInfo().Config.MaxConsumers; mc > 0 {
			return mc
		}
	}
	return -1
}

// CreateBucket creates the bucket of cfg with a stream that allows at most
// maxConsumers consumers (-1: none of its own, so the server's default
// applies: 1,000 on nats-server 2.15 unless configured). The stream is
// otherwise the one jetstream's CreateKeyValue makes, which has no way to set
// the limit: see bucketStreamConfig. A bucket that exists already fails with
// an error matching jetstream.ErrBucketExists; a limit above the account's
// consumer limit with jetstream.ErrMaximumConsumersLimit.
func CreateBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig, maxConsumers int) (jetstream.KeyValue, error) {
	scfg, err := bucketStreamConfig(cfg, maxConsumers)
	if err != nil {
		return nil, err
	}
	if _, err := js.CreateStream(ctx, scfg); err != nil {
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, errors.Join(fmt.Errorf("%w: %s", jetstream.ErrBucketExists, cfg.Bucket), err)
		}
		return nil, err
	}
	return js.KeyValue(ctx, cfg.Bucket)
}

// SetMaxConsumers changes the consumer limit of an existing bucket's stream
// (-1: none of its own) and nothing else. It fails with an error matching
// jetstream.ErrStreamNotFound when the bucket does not exist.
func SetMaxConsumers(ctx context.Context, js jetstream.JetStream, bucket string, maxConsumers int) error {
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	cfg := st.CachedInfo().Config
	cfg.MaxConsumers = maxConsumers
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("set max_consumers %d: %w", maxConsumers, err)
	}
	return nil
}

// bucketStreamConfig is the stream config jetstream's CreateKeyValue builds
// for cfg (nats.go v1.55.0, jetstream/kv.go prepareKeyValueConfig), with
// MaxConsumers set to maxConsumers instead of -1. It must stay identical
// otherwise; TestBucketStreamConfigMatchesLibrary compares the two on a
// server.
func bucketStreamConfig(cfg jetstream.KeyValueConfig, maxConsumers int) (jetstream.StreamConfig, error) {
	if err := kvkey.ValidBucket(cfg.Bucket); err != nil {
		return jetstream.StreamConfig{}, err
	}
	history := int64(1)
	if cfg.History > 0 {
		if cfg.History > jetstream.KeyValueMaxHistory {
			return jetstream.StreamConfig{}, jetstream.ErrHistoryTooLarge
		}
		history = int64(cfg.History)
	}
	replicas := cfg.Replicas
	if replicas == 0 {
		replicas = 1
	}
	maxBytes := cfg.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	maxMsgSize := cfg.MaxValueSize
	if maxMsgSize == 0 {
		maxMsgSize = -1
	}
	duplicates := 2 * time.Minute
	if cfg.TTL > 0 && cfg.TTL < duplicates {
		duplicates = cfg.TTL
	}
	var compression jetstream.StoreCompression
	if cfg.Compression {
		compression = jetstream.S2Compression
	}
	if maxConsumers <= 0 {
		maxConsumers = -1
	}
	scfg := jetstream.StreamConfig{
		Name:                   "KV_" + cfg.Bucket,
		Description:            cfg.Description,
		MaxMsgsPerSubject:      history,
		MaxBytes:               maxBytes,
		MaxAge:                 cfg.TTL,
		MaxMsgSize:             maxMsgSize,
		Storage:                cfg.Storage,
		Replicas:               replicas,
		Placement:              cfg.Placement,
		AllowRollup:            true,
		DenyDelete:             true,
		Duplicates:             duplicates,
		MaxMsgs:                -1,
		MaxConsumers:           maxConsumers,
		AllowDirect:            true,
		RePublish:              cfg.RePublish,
		Compression:            compression,
		Discard:                jetstream.DiscardNew,
		AllowMsgTTL:            cfg.LimitMarkerTTL != 0,
		SubjectDeleteMarkerTTL: cfg.LimitMarkerTTL,
		Metadata:               cfg.Metadata,
	}
	subjects := []string{"$KV." + cfg.Bucket + ".>"}
	switch {
	case cfg.Mirror != nil:
		m := *cfg.Mirror
		if !strings.HasPrefix(m.Name, "KV_") {
			m.Name = "KV_" + m.Name
		}
		scfg.Mirror, scfg.MirrorDirect = &m, true
	case len(cfg.Sources) > 0:
		for _, src := range cfg.Sources {
			if len(src.SubjectTransforms) > 0 {
				scfg.Sources = append(scfg.Sources, src)
				continue
			}
			ss := *src
			name := strings.TrimPrefix(ss.Name, "KV_")
			ss.Name = "KV_" + name
			if ss.External == nil || name != cfg.Bucket {
				ss.SubjectTransforms = []jetstream.SubjectTransformConfig{{Source: "$KV." + name + ".>", Destination: "$KV." + cfg.Bucket + ".>"}}
			}
			scfg.Sources = append(scfg.Sources, &ss)
		}
		scfg.Subjects = subjects
	default:
		scfg.Subjects = subjects
	}
	return scfg, nil
}

// kvConfig is the jetstream form of the bucket config.
func kvConfig(b BucketConfig) jetstream.KeyValueConfig {
	st := jetstream.FileStorage
	if b.Storage == "memory" {
		st = jetstream.MemoryStorage
	}
	kv := jetstream.KeyValueConfig{
		Bucket: b.Name, Description: b.Description, History: uint8(b.History), TTL: b.TTL,
		MaxBytes: b.MaxBytes, MaxValueSize: b.MaxValueSize, Replicas: b.Replicas, Storage: st,
	}
	if b.Republish {
		kv.RePublish = RePublish(b.Name)
	}
	return kv
}

// bucketDiff names the settings in which st differs from want.
func bucketDiff(want jetstream.KeyValueConfig, st jetstream.KeyValueStatus) string {
	var d []string
	js, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return ""
	}
	cfg := js.Config()
	if int64(cfg.History) != int64(want.History) {
		d = append(d, fmt.Sprintf("history %d (config %d)", cfg.History, want.History))
	}
	if cfg.TTL != want.TTL {
		d = append(d, fmt.Sprintf("ttl %v (config %v)", cfg.TTL, want.TTL))
	}
	if cfg.MaxBytes != want.MaxBytes {
		d = append(d, fmt.Sprintf("max_bytes %d (config %d)", cfg.MaxBytes, want.MaxBytes))
	}
	if cfg.MaxValueSize != want.MaxValueSize {
		d = append(d, fmt.Sprintf("max_value_size %d (config %d)", cfg.MaxValueSize, want.MaxValueSize))
	}
	if cfg.Replicas != want.Replicas {
		d = append(d, fmt.Sprintf("replicas %d (config %d)", cfg.Replicas, want.Replicas))
	}
	if cfg.Storage != want.Storage {
		d = append(d, fmt.Sprintf("storage %v (config %v)", cfg.Storage, want.Storage))
	}
	if want.RePublish != nil && !Republishes(want.Bucket, cfg.RePublish) {
		d = append(d, fmt.Sprintf("republish %s (config %s)", RepublishName(cfg.RePublish), want.RePublish.Destination))
	}
	return strings.Join(d, ", ")
}
