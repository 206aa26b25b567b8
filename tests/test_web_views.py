"""xray.web.views: Markdown of a result."""

from __future__ import annotations

from xray.web import views


def test_markdown_escape_keeps_patient_names_literal():
    assert views.md_escape("*Roe* [x](http://y) #1") == "\\*Roe\\* \\[x\\]\\(http://y\\) \\#1"
    assert views.md_escape("Jane Roe") == "Jane Roe"


def test_trust_heat_markdown_warns_when_low():
    low = views.heat_markdown(0.2, 0.3)
    assert "Only 30% of the heatmap lies over the chest (20% over the lung fields)" in low and "⚠️" in low
    high = views.heat_markdown(0.45, 0.8)
    assert "45% of the heat lies inside the estimated lung fields, 80% over the chest." == high
    assert "not checked" in views.heat_markdown(None)


def test_trust_heat_markdown_shows_the_fallback_note():
    from xray.trust.lungs import FALLBACK_NOTE

    text = views.heat_markdown(0.45, 0.8, FALLBACK_NOTE)
    assert text == f"45% of the heat lies inside the estimated lung fields, 80% over the chest. {FALLBACK_NOTE}"
    assert views.heat_markdown(None, None, FALLBACK_NOTE).endswith(FALLBACK_NOTE)
    assert FALLBACK_NOTE not in views.heat_markdown(0.45, 0.8)
