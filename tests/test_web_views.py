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


def test_label_value_heads_with_the_decision_and_orders_by_probability():
    # a child at P(PNEUMONIA) = 0.70 under the children's threshold 0.797 is NORMAL: the headline says NORMAL
    value = views.label_value("NORMAL", {"NORMAL": 0.3, "PNEUMONIA": 0.7})
    assert value["label"] == "NORMAL"
    assert [c["label"] for c in value["confidences"]] == ["PNEUMONIA", "NORMAL"]
    assert [c["confidence"] for c in value["confidences"]] == [0.7, 0.3]
    # no decision (a model deciding by argmax): the likeliest class heads
    assert views.label_value(None, {"NORMAL": 0.2, "COVID-19": 0.5, "PNEUMONIA": 0.3})["label"] == "COVID-19"


def test_decision_label_component_keeps_the_decision_as_its_headline():
    """The component the Diagnose and demo tabs use sends the decision, where gr.Label would send the argmax."""
    import gradio as gr

    from ui.common import decision_label

    component = decision_label(num_top_classes=5)
    data = component.postprocess(views.label_value("NORMAL", {"NORMAL": 0.3, "PNEUMONIA": 0.7}))
    assert data.label == "NORMAL" and [c.label for c in data.confidences] == ["PNEUMONIA", "NORMAL"]
    assert gr.Label().postprocess({"NORMAL": 0.3, "PNEUMONIA": 0.7}).label == "PNEUMONIA"  # what it replaces
    assert component.postprocess({"NORMAL": 0.9, "PNEUMONIA": 0.1}).label == "NORMAL"  # plain dicts still work
    assert component.postprocess(None) == {}
    assert type(component) is gr.Label and component.get_block_name() == "label"  # the same front-end component
