"""Shared report building blocks: charts as PNG bytes (`plots`) and self-contained HTML pages
with those charts embedded (`html`), and terminal tables for generated-text reports, decoding
search and tokenizer figures (`tables`). Consumers (compare, search) assemble their own pages."""
