package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/agent"
)

func TestLoadConfigWatch(t *testing.T) {
	cfg, err := loadConfig(writeConfig(t, "k.yaml", "nats: {url: nats://h:1}\nfiles: [{bucket: app, dir: /tmp/x}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Watch.Mode, agent.WatchAuto; got != want {
		t.Errorf("default watch.mode=%q, want %q", got, want)
	}
	if got, want := cfg.Watch.CheckInterval, 30*time.Second; got != want {
		t.Errorf("default watch.check_interval=%v, want %v", got, want)
	}

	cfg, err = loadConfig(writeConfig(t, "k.yaml", `nats: {url: nats://h:1}
files: [{bucket: app, dir: /tmp/x}]
buckets: [{name: flags, republish: true}]
watch:
  mode: consumer
  buckets: {flags: republish, Other_1: auto}
  check_interval: 5s
`))
	if err != nil {
		t.Fatal(err)
	}
	for bucket, want := range map[string]string{"flags": agent.WatchRepublish, "Other_1": agent.WatchAuto, "app": agent.WatchConsumer} {
		if got := cfg.Watch.ModeOf(bucket); got != want {
			t.Errorf("mode of %s=%q, want %q", bucket, got, want)
		}
	}
	if got, want := cfg.Watch.CheckInterval, 5*time.Second; got != want {
		t.Errorf("watch.check_interval=%v, want %v", got, want)
	}
	if !cfg.Buckets[0].Republish {
		t.Error("buckets[0].republish not read")
	}

	_, err = loadConfig(writeConfig(t, "k.yaml", `nats: {url: nats://h:1}
files: [{bucket: app, dir: /tmp/x}]
watch:
  mode: pull
  buckets: {flags: push, "a b": auto}
  check_interval: 10ms
`))
	var ue usageError
	if !errors.As(err, &ue) {
		t.Fatalf("error %v is not a usage error (exit 2)", err)
	}
	for _, want := range []string{
		`watch.mode: "pull" is not consumer, republish or auto`,
		`watch.buckets.flags: "push" is not consumer, republish or auto`,
		"watch.buckets.a b:",
		"watch.check_interval: 10ms is less than 100ms",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}
