package kvkey

import (
	"errors"
	"fmt"
	"strings"
)

// MaxKeyLen is the longest key kvsync accepts. The server closes a writer's
// connection at around 4000 bytes; a KiB leaves room for the subject prefix.
const MaxKeyLen = 1024

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("invalid")

// Valid reports why key is not a valid KV key, or nil.
// A key is 1..MaxKeyLen bytes of [-/_=.a-zA-Z0-9], with no leading or trailing
// '.', and no empty token ("..").
func Valid(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("key is empty: %w", ErrInvalid)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("key is %d bytes, longer than %d: %w", len(key), MaxKeyLen, ErrInvalid)
	case key[0] == '.' || key[len(key)-1] == '.':
		return fmt.Errorf("key %q starts or ends with '.': %w", key, ErrInvalid)
	case strings.Contains(key, ".."):
		return fmt.Errorf("key %q has an empty token (\"..\"): %w", key, ErrInvalid)
	}
	for i := 0; i < len(key); i++ {
		if !keyByte(key[i]) {
			return fmt.Errorf("key %q has byte %q at %d; allowed are [-/_=.a-zA-Z0-9]: %w", key, key[i], i, ErrInvalid)
		}
	}
	return nil
}

func keyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '/' || c == '_' || c == '=' || c == '.'
}

// ValidFilter reports why f is not a valid key filter, or nil. A filter is a key
// whose tokens may also be '*' (one token) or, as the last token, '>' (one or more).
func ValidFilter(f string) error {
	if f == "" {
		return fmt.Errorf("filter is empty: %w", ErrInvalid)
	}
	if len(f) > MaxKeyLen {
		return fmt.Errorf("filter is %d bytes, longer than %d: %w", len(f), MaxKeyLen, ErrInvalid)
	}
	toks := strings.Split(f, ".")
	for i, t := range toks {
		switch t {
		case "":
			return fmt.Errorf("filter %q has an empty token: %w", f, ErrInvalid)
		case "*":
			continue
		case ">":
			if i != len(toks)-1 {
				return fmt.Errorf("filter %q: '>' must be the last token: %w", f, ErrInvalid)
			}
			continue
		}
		for j := 0; j < len(t); j++ {
			if !keyByte(t[j]) {
				return fmt.Errorf("filter %q has byte %q in token %q; allowed are [-/_=.a-zA-Z0-9*>]: %w", f, t[j], t, ErrInvalid)
			}
		}
	}
	return nil
}

// ValidBucket reports why name is not a valid bucket name, or nil.
// Bucket names are [-_a-zA-Z0-9]+ (the stream is named KV_<bucket>).
func ValidBucket(name string) error {
	if name == "" {
		return fmt.Errorf("bucket name is empty: %w", ErrInvalid)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("bucket name %q has byte %q; allowed are [-_a-zA-Z0-9]: %w", name, c, ErrInvalid)
		}
	}
	return nil
}

// Match reports whether key matches the NATS wildcard filter. Tokens are separated
// by '.'; '*' matches exactly one token and a final '>' one or more. '/' is an
// ordinary character.
func Match(filter, key string) bool {
	for {
		var ft, kt string
		var fmore, kmore bool
		ft, filter, fmore = strings.Cut(filter, ".")
		if ft == ">" && !fmore {
			return key != ""
		}
		kt, key, kmore = strings.Cut(key, ".")
		if ft != "*" && ft != kt {
			return false
		}
		if !fmore || !kmore {
			return fmore == kmore
		}
	}
}

// MatchAny reports whether key matches any of filters.
func MatchAny(filters []string, key string) bool {
	for _, f := range filters {
		if Match(f, key) {
			return true
		}
	}
	return false
}

// Literal reports whether filter has no wildcard token.
func Literal(filter string) bool {
	for _, t := range strings.Split(filter, ".") {
		if t == "*" || t == ">" {
			return false
		}
	}
	return true
}

// Split splits a "bucket:key" reference. Without a colon the whole string is the
// key and bucket is def.
func Split(ref, def string) (bucket, key string) {
	if b, k, ok := strings.Cut(ref, ":"); ok {
		return b, k
	}
	return def, ref
}
