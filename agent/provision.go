package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// provision creates every configured bucket that is missing. An existing
// bucket whose settings differ is reported at WARN and left as it is.
func provision(ctx context.Context, js jetstream.JetStream, buckets []BucketConfig, logger *slog.Logger) error {
	for _, b := range buckets {
		want := b.kvConfig()
		kv, err := js.KeyValue(ctx, b.Name)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			if _, err := js.CreateKeyValue(ctx, want); err != nil {
				return fmt.Errorf("create bucket %s: %w", b.Name, err)
			}
			logger.Info("bucket created", "bucket", b.Name, "history", b.History, "ttl", b.TTL, "replicas", b.Replicas)
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
	}
	return nil
}

// kvConfig is the jetstream form of the bucket config.
func (b BucketConfig) kvConfig() jetstream.KeyValueConfig {
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
