package projector

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// envName maps a key to an environment variable name: prefix followed by the key
// with strip removed, upper-cased (ASCII), with '.', '-' and '/' turned into '_'.
// It returns an error when the key does not start with strip, nothing is left
// after it, or the result is not [A-Za-z_][A-Za-z0-9_]*.
func envName(key, strip, prefix string) (string, error) {
	rest, ok := strings.CutPrefix(key, strip)
	if !ok {
		return "", fmt.Errorf("key %q does not start with strip prefix %q", key, strip)
	}
	if rest == "" {
		return "", fmt.Errorf("key %q is empty after stripping %q", key, strip)
	}
	b := make([]byte, 0, len(prefix)+len(rest))
	b = append(b, prefix...)
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		switch {
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		case c == '.' || c == '-' || c == '/':
			c = '_'
		}
		b = append(b, c)
	}
	name := string(b)
	if !ValidEnvName(name) {
		return "", fmt.Errorf("key %q maps to %q, which is not a valid variable name [A-Za-z_][A-Za-z0-9_]*", key, name)
	}
	return name, nil
}

// ValidEnvName reports whether s is a variable name an environment carries
// everywhere: [A-Za-z_][A-Za-z0-9_]*.
func ValidEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// EnvProblem is a key that did not become a variable: its name is invalid, its
// value holds a NUL byte (an environment cannot carry one), or its name collides
// with that of a lexically earlier key, which won. Name is empty when no valid
// name could be made.
type EnvProblem struct {
	Key, Name, Reason string
}

// EnvVars maps key->value to name->value: a name is the prefix followed by the
// key with strip removed, upper-cased (ASCII), with '.', '-' and '/' turned
// into '_', and must be [A-Za-z_][A-Za-z0-9_]*. Keys are taken in lexical
// order, so on a collision the lexically first key with a usable value wins,
// deterministically; every key that is not used is reported in problems, in key
// order.
func EnvVars(kv map[string][]byte, strip, prefix string) (vars map[string]string, problems []EnvProblem) {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	vars = make(map[string]string, len(kv))
	winner := make(map[string]string, len(kv))
	for _, k := range keys {
		name, err := envName(k, strip, prefix)
		if err != nil {
			problems = append(problems, EnvProblem{Key: k, Reason: err.Error()})
			continue
		}
		v := kv[k]
		if bytes.IndexByte(v, 0) >= 0 {
			problems = append(problems, EnvProblem{Key: k, Name: name, Reason: "value has a NUL byte"})
			continue
		}
		if w, ok := winner[name]; ok {
			problems = append(problems, EnvProblem{Key: k, Name: name, Reason: fmt.Sprintf("name collides with key %q, which wins", w)})
			continue
		}
		winner[name] = k
		vars[name] = string(v)
	}
	return vars, problems
}

// EncodeDotenv encodes vars as NAME='value' lines sorted by name.
//
// The quoting is POSIX shell single quotes, the only form that carries every byte
// (spaces, quotes, '$', backslashes, newlines, any unicode or invalid UTF-8)
// unchanged through `. file` in sh, bash, dash and busybox: nothing inside single
// quotes is special, and a single quote itself is closed, escaped and reopened:
//
//	it's  ->  NAME='it'\''s'
//
// Values without a single quote are also read literally by the
// common dotenv parsers (systemd EnvironmentFile, docker compose, godotenv,
// python-dotenv; multi-line values where the parser supports them). Values with a
// single quote round-trip only through a shell; Docker's --env-file, which does no
// unquoting at all, cannot carry such files either way.
//
// Entries that no environment can hold (an invalid name, a value with a NUL byte)
// are left out; EnvVars reports them.
func EncodeDotenv(vars map[string]string) []byte {
	names := make([]string, 0, len(vars))
	n := 0
	for k, v := range vars {
		if !ValidEnvName(k) || strings.IndexByte(v, 0) >= 0 {
			continue
		}
		names = append(names, k)
		n += len(k) + len(v) + 4
	}
	slices.Sort(names)
	b := make([]byte, 0, n)
	for _, k := range names {
		v := vars[k]
		b = append(b, k...)
		b = append(b, '=', '\'')
		for {
			i := strings.IndexByte(v, '\'')
			if i < 0 {
				break
			}
			b = append(b, v[:i]...)
			b = append(b, `'\''`...)
			v = v[i+1:]
		}
		b = append(b, v...)
		b = append(b, '\'', '\n')
	}
	return b
}
