package templates

import (
	"context"
	"testing"
)

const rangeText = `{{ range keys "app.>" }}{{ .Key }}={{ .Value }}
{{ end }}`

func benchRender(b *testing.B, text string, src Source) {
	tmpl, err := Parse("bench", text, Options{DefaultBucket: "app"})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tmpl.Render(ctx, src); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRender1kKeys(b *testing.B) { benchRender(b, rangeText, bigSource(1_000)) }

func BenchmarkRender10kKeys(b *testing.B) { benchRender(b, rangeText, bigSource(10_000)) }

// BenchmarkRenderOneKey reads one key of a 10k-key Source; compare with
// BenchmarkRenderOneKeySmallSource: the cost must not depend on unread keys.
func BenchmarkRenderOneKey(b *testing.B) {
	benchRender(b, `value={{ key "app.k04242" }}`, bigSource(10_000))
}

// BenchmarkRenderOneKeySmallSource is BenchmarkRenderOneKey over 10 keys.
func BenchmarkRenderOneKeySmallSource(b *testing.B) {
	benchRender(b, `value={{ key "app.k00004" }}`, bigSource(10))
}

// BenchmarkRenderOneKeyParallel is BenchmarkRenderOneKey from GOMAXPROCS
// goroutines sharing the Template.
func BenchmarkRenderOneKeyParallel(b *testing.B) {
	tmpl, err := Parse("bench", `value={{ key "app.k04242" }}`, Options{DefaultBucket: "app"})
	if err != nil {
		b.Fatal(err)
	}
	src := bigSource(10_000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := tmpl.Render(context.Background(), src); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkBindClone is what binding a render costs without the pool:
// Clone of the parsed template plus Funcs. Render pays it only on a pool miss.
func BenchmarkBindClone(b *testing.B) {
	tmpl, err := Parse("bench", `value={{ key "app.k04242" }}`, Options{DefaultBucket: "app"})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tmpl.newBinding(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParse is the one-time cost of Parse, sprig's function map included.
func BenchmarkParse(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("bench", rangeText, Options{DefaultBucket: "app"}); err != nil {
			b.Fatal(err)
		}
	}
}
