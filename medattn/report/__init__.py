"""Pages a person reads: self-contained HTML (:mod:`.html_page`), the figures they embed (:mod:`.figures`, drawn
from :mod:`.volumes`), and the demo's summary as a terminal table and ``report.html`` (:mod:`.demo_summary`)."""
