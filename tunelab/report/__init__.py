"""Shared report building blocks: charts as PNG bytes (`plots`) and self-contained HTML pages
with those charts embedded (`html`). Consumers (compare, search) assemble their own pages."""
