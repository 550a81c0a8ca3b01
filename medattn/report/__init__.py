"""Reports a person reads: self-contained HTML pages (:mod:`.html`) and the figures they embed (:mod:`.figures`)."""
