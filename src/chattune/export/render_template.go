// Renders an Ollama TEMPLATE with Go's text/template (the engine Ollama uses) for chattune's template parity
// check. Reads {"template": "...", "cases": [[{"role": ..., "content": ...}, ...], ...]} on stdin and
// writes a JSON list of the rendered prompts. The data shape (.Messages with .Role/.Content) is Ollama's.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

type Input struct {
	Template string      `json:"template"`
	Cases    [][]Message `json:"cases"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("ollama").Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(3)
	}
	out := make([]string, 0, len(in.Cases))
	for i, msgs := range in.Cases {
		var b strings.Builder
		if err := tmpl.Execute(&b, Values{Messages: msgs}); err != nil {
			fmt.Fprintf(os.Stderr, "case %d: %v\n", i, err)
			os.Exit(4)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(5)
	}
}
