package templates

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/template"

	"github.com/pelletier/go-toml/v2"
)

// consul-template's function names.
//
// A template written for consul-template mostly runs unchanged: the names
// below are consul-template's, with its semantics where they differ from the
// kvsync function they stand beside (keyOrDefault, parseJSON, parseYAML: see
// each). Names that sprig already defines with other arguments (split,
// contains, regexReplaceAll, trim, ...) keep sprig's meaning: docs/MIGRATING.md
// lists them with the rewrite.

// addCompatFuncs adds the consul-template names that need no render state.
func addCompatFuncs(m template.FuncMap) {
	m["parseJSON"] = parseJSON
	m["parseYAML"] = parseYAML
	m["toTOML"] = toTOML
	m["toJSONPretty"] = toJSONPretty
	m["toUnescapedJSON"] = toJSON
	m["toUnescapedJSONPretty"] = toJSONPretty
	m["parseBool"] = parseBool
	m["parseInt"] = parseInt
	m["parseUint"] = parseUint
	m["parseFloat"] = parseFloat
	m["base64Encode"] = base64Encode
	m["base64Decode"] = base64Decode
	m["base64URLEncode"] = base64URLEncode
	m["base64URLDecode"] = base64URLDecode
	m["trimSpace"] = strings.TrimSpace
	m["toLower"] = strings.ToLower
	m["toUpper"] = strings.ToUpper
	m["toTitle"] = m["title"]
	m["replaceAll"] = m["replace"] // replaceAll OLD NEW S, as sprig's replace
	m["sha256Hex"] = m["sha256sum"]
	m["md5sum"] = md5sum
}

// keyOrDefault is consul-template's: the value of the key, or def when the
// key is absent or its value is empty (keyOr returns an empty value as is).
func (b *binding) keyOrDefault(ref string, def any) (string, error) {
	v, err := b.keyOr(ref, def)
	if err != nil || v != "" {
		return v, err
	}
	return defaultString(def), nil
}

func (b *binding) ls(ref string) ([]Record, error) {
	if b.r == nil {
		return nil, errNotRendering
	}
	return b.r.ls(ref, false)
}

func (b *binding) safeLs(ref string) ([]Record, error) {
	if b.r == nil {
		return nil, errNotRendering
	}
	return b.r.ls(ref, true)
}

// ls lists the keys one segment below prefix, with Key relative to the
// prefix, as consul-template's ls lists the keys one "/" below a path. It
// reads the filter "prefix.*" ("*" for the top level of the bucket) and, as
// tree nests on both '.' and '/', leaves out keys whose remainder holds a
// '/'. safe (safeLs): an empty list is a missing dependency, like a missing
// `key`, so the render fails and the last good file stays.
func (r *render) ls(ref string, safe bool) ([]Record, error) {
	bucket, prefix, err := splitRef(ref, r.def, refPrefix)
	if err != nil {
		return nil, err
	}
	filter := "*"
	if prefix != "" {
		filter = prefix + ".*"
	}
	recs, err := r.list(bucket, filter)
	if err != nil {
		return nil, err
	}
	// The list is this render's own (see list): rewriting it in place is
	// safe.
	out := recs[:0]
	for _, rec := range recs {
		if prefix != "" {
			rec.Key = rec.Key[len(prefix)+1:]
		}
		if !strings.Contains(rec.Key, "/") {
			out = append(out, rec)
		}
	}
	if safe && len(out) == 0 {
		r.miss(bucket + ":" + filter)
	}
	return out, nil
}

// parseJSON is fromJSON, except that an empty string is an empty map, as in
// consul-template.
func parseJSON(s string) (any, error) {
	if s == "" {
		return map[string]any{}, nil
	}
	return fromJSON(s)
}

// parseYAML is fromYAML, except that an empty string is an empty map, as in
// consul-template.
func parseYAML(s string) (any, error) {
	if s == "" {
		return map[string]any{}, nil
	}
	return fromYAML(s)
}

// toTOML encodes a map (a TOML document is a table) with sorted keys and no
// trailing newline. Numbers from fromJSON become TOML integers or floats.
func toTOML(v any) (string, error) {
	v, err := tomlNumbers(v)
	if err != nil {
		return "", fmt.Errorf("encode TOML: %w", err)
	}
	if _, ok := v.(map[string]any); !ok {
		return "", fmt.Errorf("encode TOML: a document is a table (a map), not %T", v)
	}
	var buf bytes.Buffer
	enc := toml.NewEncoder(&buf)
	enc.SetIndentTables(true)
	if err := enc.Encode(v); err != nil {
		return "", fmt.Errorf("encode TOML: %w", err)
	}
	return strings.TrimRight(buf.String(), "\n"), nil
}

// tomlNumbers returns v with every json.Number replaced by an int64, or a
// float64 when it has a fraction or exponent; v itself is not modified. An
// integer beyond int64 is an error: TOML has no bigger integers, and a float
// would change its digits.
func tomlNumbers(v any) (any, error) {
	switch v := v.(type) {
	case json.Number:
		if !strings.ContainsAny(string(v), ".eE") {
			i, err := v.Int64()
			if err != nil {
				return nil, fmt.Errorf("number %s does not fit a TOML integer (64 bits)", v)
			}
			return i, nil
		}
		f, err := v.Float64()
		if err != nil {
			return nil, fmt.Errorf("number %s: %w", v, err)
		}
		return f, nil
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			c, err := tomlNumbers(e)
			if err != nil {
				return nil, err
			}
			m[k] = c
		}
		return m, nil
	case []any:
		s := make([]any, len(v))
		for i, e := range v {
			c, err := tomlNumbers(e)
			if err != nil {
				return nil, err
			}
			s[i] = c
		}
		return s, nil
	default:
		return v, nil
	}
}

// toJSONPretty is toJSON indented by two spaces.
func toJSONPretty(v any) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return "", fmt.Errorf("encode JSON: %w", err)
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// parseBool, parseInt, parseUint and parseFloat read a string as consul-template
// does: an empty string is the zero value, anything else must parse (base 10
// for integers) or the render fails.
func parseBool(s string) (bool, error) {
	if s == "" {
		return false, nil
	}
	v, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("parseBool: %w", err)
	}
	return v, nil
}

func parseInt(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parseInt: %w", err)
	}
	return v, nil
}

func parseUint(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parseUint: %w", err)
	}
	return v, nil
}

func parseFloat(s string) (float64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("parseFloat: %w", err)
	}
	return v, nil
}

// base64Encode and base64Decode use the standard alphabet with padding;
// unlike sprig's b64dec, a bad input fails the render instead of printing
// the error.
func base64Encode(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func base64Decode(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "", fmt.Errorf("base64Decode: %w", err)
	}
	return string(b), nil
}

// base64URLEncode and base64URLDecode use the URL-safe alphabet (- and _).
// Encoding pads with =; decoding takes the input with or without padding.
func base64URLEncode(s string) string { return base64.URLEncoding.EncodeToString([]byte(s)) }

func base64URLDecode(s string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return "", fmt.Errorf("base64URLDecode: %w", err)
	}
	return string(b), nil
}

// md5sum is the hex MD5 of s (a checksum to put into a file, not security).
func md5sum(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}
