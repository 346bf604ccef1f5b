"""Pure pipeline steps over records: mapping, curation, anonymisation."""
