package main

import (
	"errors"
	"testing"
)

// FuzzParseConfig feeds arbitrary bytes to the config loader under each file
// extension. It must never panic, and every error must be a usageError (exit
// code 2), never something else escaping from a parser.
func FuzzParseConfig(f *testing.F) {
	f.Add(uint8(0), []byte("nats: {url: nats://127.0.0.1:4222}\nfiles:\n  - {bucket: app, dir: /tmp/x}\n"))
	f.Add(uint8(0), []byte("files: [{bucket: app, dir: ./conf, keys: \"a.>,b.*\", wait: {min: 1s, max: 10ms}}]\nwait: {min: -1s}\n"))
	f.Add(uint8(0), []byte("templates:\n  - {text: '{{ key \"k\" }}', dest: out, on_change: {signal: HUP, pidfile: p}}\nexec: {command: [a], kill_timeout: forever}\n"))
	f.Add(uint8(0), []byte("env: [{bucket: app, prefix: \"1X\"}]\nbuckets: [{name: app, history: 999, ttl: 1h, replicas: \"three\"}]\n"))
	f.Add(uint8(0), []byte("a: &a [*a, *a, *a]\nb: *a\n"))
	f.Add(uint8(0), []byte("nats: 7\nfiles: {bucket: app}\nhttp: [1, 2]\n"))
	f.Add(uint8(1), []byte("[nats]\nurl = \"nats://x\"\n[[files]]\nbucket = \"app\"\ndir = \"/tmp/x\"\n"))
	f.Add(uint8(1), []byte("[[files]]\nbucket = 1\n[[files]]\n"))
	f.Add(uint8(2), []byte(`{"files": [{"bucket": "app", "dir": "/tmp/x", "mode": "0999"}], "log": {"level": "loud"}}`))
	f.Add(uint8(2), []byte(`{"files": [null, 1, "x", {"bucket": {"a": []}}]}`))
	f.Add(uint8(0), []byte("\xff\xfe\x00"))
	f.Add(uint8(0), []byte("templates:\n  - {text: '[[ env \"X\" ]]{{ nosuch }}', dest: out, left_delimiter: '[[', right_delimiter: ']]', function_denylist: [env, nope], file_root: /nonexistent}\n"))
	f.Fuzz(func(t *testing.T, ext uint8, data []byte) {
		path := [...]string{"x.yaml", "x.toml", "x.json", "x.yml"}[int(ext)%4]
		cfg, err := parseConfig(path, data)
		if err == nil {
			if cfg == nil {
				t.Fatalf("parseConfig(%s) = nil config and no error", path)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("parseConfig(%s) accepted a config that does not validate: %v", path, err)
			}
			return
		}
		var ue usageError
		if !errors.As(err, &ue) {
			t.Fatalf("parseConfig(%s) error %T is not a usageError: %v", path, err, err)
		}
	})
}
