"""Student construction: layer selection, bit-for-bit copies of the chosen teacher layers, narrowing by importance."""
from __future__ import annotations

import pytest
import torch

from xlmr_compress import directory, tiny
from xlmr_compress.distillation import StudentShape, build_student, select_layers
from xlmr_compress.errors import UserError
from xlmr_compress.importance import hidden_ranking
from xlmr_compress.surgery import layer_shapes


def test_select_layers():
    assert select_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert select_layers(12, 4, "first") == [0, 1, 2, 3]
    assert select_layers(12, 1) == [11]
    assert select_layers(12, explicit=[3, 11]) == [3, 11]
    for bad in (dict(k=13), dict(k=0), dict(explicit=[0, 12]), dict(explicit=[4, 2]), {}):
        with pytest.raises(UserError):
            select_layers(12, **bad)


@pytest.mark.parametrize("task", directory.TASKS)
def test_student_layers_equal_the_teachers_bit_for_bit(task: str):
    teacher = tiny.tiny_model(task, num_hidden_layers=4, seed=1)
    student = build_student(teacher, StudentShape([1, 3]))
    t_layers, s_layers = teacher.base_model.encoder.layer, student.base_model.encoder.layer
    for s_index, t_index in enumerate([1, 3]):
        t_state, s_state = t_layers[t_index].state_dict(), s_layers[s_index].state_dict()
        assert t_state.keys() == s_state.keys()
        assert all(torch.equal(t_state[k], s_state[k]) for k in t_state)
    t_rest = {k: v for k, v in teacher.state_dict().items() if ".encoder." not in k}
    s_rest = {k: v for k, v in student.state_dict().items() if ".encoder." not in k}
    assert t_rest.keys() == s_rest.keys() and all(torch.equal(t_rest[k], s_rest[k]) for k in t_rest)  # embeddings, head
    assert student.config.num_hidden_layers == 2


def test_all_layers_reproduce_the_teacher():
    teacher = tiny.tiny_model("token-classification", num_hidden_layers=3, seed=2)
    student = build_student(teacher, StudentShape([0, 1, 2]))
    ids = torch.randint(4, 60, (2, 9))
    with torch.no_grad():
        assert torch.equal(teacher(input_ids=ids).logits, student(input_ids=ids).logits)


def test_narrow_student_keeps_the_most_important_heads_and_saves_and_loads(tmp_path):
    teacher = tiny.tiny_model("sequence-classification", num_hidden_layers=2, seed=3)
    with torch.no_grad():  # make head 2 of layer 1 and FFN neuron 5 clearly the most important
        att = teacher.base_model.encoder.layer[1].attention.self
        att.query.weight[16:24] *= 50
        teacher.base_model.encoder.layer[1].intermediate.dense.weight[5] *= 50
    student = build_student(teacher, StudentShape([0, 1], heads=1, ffn=8, hidden=24))
    assert layer_shapes(student) == {"head_size": 8, "heads": [1, 1], "ffn": [8, 8]}
    assert student.config.hidden_size == 24
    s_att = student.base_model.encoder.layer[1].attention.self
    kept = hidden_ranking(teacher)[:24].sort().values
    assert torch.equal(s_att.query.weight, att.query.weight[16:24][:, kept])  # head 2's rows, kept hidden columns
    t_up = teacher.base_model.encoder.layer[1].intermediate.dense.weight[:, kept]
    s_up = student.base_model.encoder.layer[1].intermediate.dense.weight
    assert any(torch.equal(row, t_up[5]) for row in s_up)  # neuron 5 is among the 8 kept
    out = tmp_path / "narrow"
    setattr(student.config, directory.SHAPES_KEY, layer_shapes(student))
    student.save_pretrained(out)
    tiny.tiny_tokenizer().save_pretrained(out)
    loaded, _ = directory.load(out)
    ids = torch.randint(4, 60, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_student_wider_than_teacher_is_refused():
    teacher = tiny.tiny_model(num_hidden_layers=2)
    for shape in (StudentShape([0], hidden=64), StudentShape([0], heads=8), StudentShape([0], ffn=128)):
        with pytest.raises(UserError, match="wider than its teacher"):
            build_student(teacher, shape)


def test_fresh_student_has_new_layers_and_the_teachers_narrowed_embeddings():
    teacher = tiny.tiny_model(num_hidden_layers=2, seed=4)
    shape = StudentShape([0, 1], hidden=24, init="fresh")
    student, again = build_student(teacher, shape, seed=7), build_student(teacher, shape, seed=7)
    kept = hidden_ranking(teacher)[:24].sort().values
    t_base, s_base = teacher.base_model, student.base_model
    assert torch.equal(s_base.embeddings.word_embeddings.weight, t_base.embeddings.word_embeddings.weight[:, kept])
    t_up = t_base.encoder.layer[0].intermediate.dense.weight[:, kept]
    assert s_base.encoder.layer[0].intermediate.dense.weight.shape == t_up.shape
    assert not torch.equal(s_base.encoder.layer[0].intermediate.dense.weight, t_up)
    assert all(torch.equal(value, again.state_dict()[name]) for name, value in student.state_dict().items())
