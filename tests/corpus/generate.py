#!/usr/bin/env python3
"""Generates the token-estimation corpus (tests/corpus/*.jsonl).

Everything is synthesised here from hand-written vocabularies and templates (no
third-party text), deterministically (fixed seed): re-running gives identical
files. Classes: english, code, json, cjk (zh/ja/ko), cyrillic (ru/uk) and chat
(OpenAI chat request bodies with tools). Each line is one sample:
{"id": ..., "lang": ..., "text": ...} or, for chat, {"id": ..., "body": {...}}.

Lengths are log-uniform so samples range from tens to thousands of tokens.

    python3 tests/corpus/generate.py          # writes tests/corpus/*.jsonl
"""

import json
import math
import os
import random

OUT = os.path.dirname(os.path.abspath(__file__))
N_PER_CLASS = 240
R = random.Random(20240611)


def w(s):
    return s.split()


def pick(xs):
    return R.choice(xs)


def loglen(lo, hi):
    return int(math.exp(R.uniform(math.log(lo), math.log(hi))))


# ----------------------------------------------------------------- English

NOUNS = w("""time year people way day man woman child world school state family student group
country problem hand part place case week company system program question work government number
night point home water room mother area money story fact month lot right study book eye job word
business issue side kind head house service friend father power hour game line end member law car
city community name president team minute idea kid body information back parent face others level
office door health person art war history party result change morning reason research girl guy
moment air teacher force education foot boy age policy process music market sense nation plan
college interest death experience effect class control care field development role effort rate
heart drug show leader light voice wife police mind price report decision son view relationship
town road arm difference value building action model season society tax director position player
record paper space ground form event official matter center couple site project activity star
table need court oil situation cost industry figure street image phone data picture practice piece
land product doctor wall patient worker news test movie north love support technology step baby
computer type attention film tree source organization hair window evidence population site network
server database request response customer invoice schedule deadline budget meeting committee
library algorithm cluster gateway pipeline deployment kernel latency throughput bandwidth protocol
river mountain garden harbor bridge village island forest valley desert coast engine battery
kitchen recipe flavor ingredient oven bakery festival museum gallery theater orchestra novel poem""")
ADJS = w("""good new first last long great little own other old right big high different small large
next early young important few public bad same able local sure free better true whole clear recent
certain personal open red difficult available likely short single medical current wrong private past
foreign fine common poor natural significant similar hot dead central happy serious ready simple left
physical general environmental financial blue democratic dark various entire close legal religious
cold final main green nice huge popular traditional cultural quiet reliable scalable distributed
asynchronous redundant obsolete efficient robust fragile subtle elaborate meticulous ambiguous
transparent intermittent unprecedented comprehensive sustainable inexpensive bright narrow ancient""")
VERBS = w("""said made took came saw knew gave found thought told became showed left felt brought
began kept held wrote stood heard meant set met ran paid sat spoke lay led read grew lost fell sent
built understood drew broke spent cut rose drove bought wore chose improved reviewed deployed
measured analyzed migrated configured recommended delayed approved rejected estimated discovered
announced explained described suggested required allowed expected considered reduced increased
replaced reported returned reached remained received included continued created provided""")
VERBS_PRES = w("""makes takes gives finds tells shows brings keeps holds writes stands hears means
runs pays reads grows sends builds understands draws breaks spends improves reviews deploys measures
analyzes migrates configures recommends delays approves rejects estimates discovers explains describes
suggests requires allows expects considers reduces increases replaces reports returns reaches""")
ADVS = w("""quickly slowly carefully quietly rarely usually often clearly probably certainly
eventually finally suddenly recently nearly simply easily really actually especially surprisingly
unfortunately fortunately roughly precisely gradually consistently occasionally""")
NAMES = w("""Alice Bob Carol David Emma Farid Grace Hiro Ines Jonas Kavya Liam Maria Nikolai Olivia
Pedro Quinn Rosa Samir Tanya Umar Valeria Wei Xavier Yuki Zara Johnson Martinez Nakamura Okafor
Schneider Rossi Kowalski Lindqvist Dubois""")
PLACES = w("""London Paris Berlin Tokyo Nairobi Lagos Toronto Sydney Madrid Lisbon Seoul Mumbai
Oslo Dublin Chicago Denver Austin Vienna Prague Warsaw Helsinki Singapore Jakarta Lima Bogota""")
ORGS = ["the city council", "the board", "our team", "the committee", "the engineering group",
        "the research lab", "the support desk", "the finance department", "the museum",
        "the local library", "the school district", "the hospital", "the startup", "the agency"]
CONNECT = ["However,", "Meanwhile,", "In addition,", "As a result,", "For example,", "Still,",
           "On the other hand,", "In practice,", "Later that year,", "To be fair,", "Overall,",
           "In short,", "By contrast,", "Nevertheless,", "At first,", "Eventually,"]
MONTHS = w("January February March April May June July August September October November December")


def np_():
    r = R.random()
    if r < 0.35:
        return "the " + pick(NOUNS)
    if r < 0.6:
        return "the " + pick(ADJS) + " " + pick(NOUNS)
    if r < 0.7:
        return pick(NAMES)
    if r < 0.8:
        return pick(ORGS)
    if r < 0.9:
        return "a " + pick(ADJS) + " " + pick(NOUNS)
    return str(R.randint(2, 999)) + " " + pick(NOUNS) + "s"


def en_sentence():
    r = R.random()
    if r < 0.25:
        s = f"{np_()} {pick(VERBS)} {np_()}"
    elif r < 0.35:
        s = f"{pick(CONNECT)} {np_()} {pick(ADVS)} {pick(VERBS)} {np_()}"
    elif r < 0.45:
        s = f"{np_()} {pick(VERBS_PRES)} {np_()} in {pick(PLACES)}"
    elif r < 0.52:
        s = (f"In {pick(MONTHS)} {R.randint(1990, 2025)}, {np_()} {pick(VERBS)} "
             f"{np_()} by {R.randint(1, 95)}%")
    elif r < 0.6:
        s = f"{np_()} {pick(VERBS)} that {np_()} was {pick(ADJS)} and {pick(ADJS)}"
    elif r < 0.66:
        s = f"\"{pick(['We', 'They', 'I', 'You'])} {pick(VERBS)} {np_()},\" {pick(NAMES)} said"
    elif r < 0.72:
        s = f"{np_()} ({pick(ADJS)}, {pick(ADJS)}) {pick(VERBS)} {np_()} for ${R.randint(3, 9999)}.{R.randint(10, 99)}"
    elif r < 0.8:
        s = f"Why {pick(['did', 'would', 'could', 'should'])} {np_()} {pick(VERBS_PRES)[:-1]} {np_()}?"
        return s[0].upper() + s[1:]
    elif r < 0.86:
        s = f"{np_()} {pick(VERBS)} {np_()}; {np_()} {pick(VERBS)} {np_()} instead"
    elif r < 0.92:
        s = (f"Between {R.randint(1, 12)}:{R.randint(0, 59):02d} and {R.randint(1, 12)}:"
             f"{R.randint(0, 59):02d}, {np_()} {pick(VERBS)} {R.randint(10, 50000):,} {pick(NOUNS)}s")
    else:
        s = f"{np_()} {pick(VERBS)} {np_()} — {pick(ADVS)} — {np_()}"
    s = s[0].upper() + s[1:]
    return s + pick([".", ".", ".", ".", "!", "..."])


def en_paragraph():
    return " ".join(en_sentence() for _ in range(R.randint(2, 7)))


def english(target):
    parts = []
    style = R.random()
    n = 0
    while n < target:
        r = R.random()
        if style > 0.6 and r < 0.12:
            p = "#" * R.randint(1, 3) + " " + " ".join(pick(NOUNS).capitalize() for _ in range(R.randint(1, 4)))
        elif style > 0.5 and r < 0.25:
            p = "\n".join(f"{pick(['-', '*', '1.'])} {en_sentence()}" for _ in range(R.randint(2, 5)))
        else:
            p = en_paragraph()
        parts.append(p)
        n += len(p) + 2
    return "\n\n".join(parts)[: max(target, 20)].rstrip()


# -------------------------------------------------------------------- code

IDW = w("""user account order item price total count index value key name id list map cache
buffer request response client server config error result data node tree path file line token
session queue worker task job event handler callback retry timeout limit offset page size len
start end begin next prev parent child left right min max sum avg rate window bucket budget
quota header body payload message stream chunk batch score weight input output state status flag
mode level option params args ctx logger metric label tag shard region zone""")
VERBSC = w("get set put add remove update create delete load save parse format build init check "
           "validate compute find fetch send read write open close reset merge split apply handle "
           "emit flush encode decode render resolve")


def ident(style):
    n = R.randint(1, 3)
    ws = [pick(VERBSC)] + [pick(IDW) for _ in range(n)] if R.random() < 0.5 else [pick(IDW) for _ in range(n)]
    if style == "snake":
        return "_".join(ws)
    if style == "camel":
        return ws[0] + "".join(x.capitalize() for x in ws[1:])
    if style == "pascal":
        return "".join(x.capitalize() for x in ws)
    return "_".join(ws).upper()


def expr(style):
    r = R.random()
    a, b = ident(style), ident(style)
    if r < 0.2:
        return f"{a} + {b}"
    if r < 0.35:
        return f"{a}[{R.randint(0, 64)}]"
    if r < 0.5:
        return f"{a}.{ident(style)}({b})"
    if r < 0.6:
        return f"{a} * {R.randint(2, 1000)}"
    if r < 0.7:
        return f"\"{pick(NOUNS)} {pick(VERBS)} {pick(NOUNS)}\""
    if r < 0.8:
        return f"{a} >= {b} && {ident(style)} != {R.randint(0, 9)}"
    if r < 0.9:
        return f"{ident(style)}({a}, {b}, {R.randint(0, 4096)})"
    return f"{a} - {R.random():.3f}"


def comment_text():
    s = en_sentence()
    return s if R.random() < 0.7 else s.lower().rstrip(".!")


def py_func(ind=""):
    name = ident("snake")
    args = ", ".join(ident("snake") for _ in range(R.randint(0, 4)))
    lines = [f"{ind}def {name}({args}):"]
    if R.random() < 0.5:
        lines.append(f'{ind}    """{comment_text()}"""')
    for _ in range(R.randint(2, 10)):
        r = R.random()
        v = ident("snake")
        if r < 0.4:
            lines.append(f"{ind}    {v} = {expr('snake').replace('&&', 'and').replace('!=', 'is not')}")
        elif r < 0.55:
            lines.append(f"{ind}    if {v} is None:\n{ind}        raise ValueError(f\"missing {v}: {{{ident('snake')}}}\")")
        elif r < 0.7:
            lines.append(f"{ind}    for {v} in {ident('snake')}:\n{ind}        {ident('snake')}.append({v})")
        elif r < 0.8:
            lines.append(f"{ind}    # {comment_text()}")
        else:
            lines.append(f"{ind}    {ident('snake')}[\"{ident('snake')}\"] = {R.randint(0, 100000)}")
    lines.append(f"{ind}    return {ident('snake')}")
    return "\n".join(lines)


def python(target):
    out = ["import " + pick(["os", "json", "sys", "re", "time", "logging"]),
           f"from {pick(['typing', 'dataclasses', 'collections'])} import {pick(['Any', 'dataclass', 'defaultdict'])}", ""]
    while sum(map(len, out)) < target:
        if R.random() < 0.3:
            cls = ident("pascal")
            out.append(f"\nclass {cls}:\n    {ident('snake')}: int = {R.randint(0, 99)}\n")
            out.append(py_func("    "))
        else:
            out.append("\n" + py_func())
    return "\n".join(out)


def c_like_block(style, ind, lang):
    lines = []
    for _ in range(R.randint(2, 9)):
        r = R.random()
        v = ident(style)
        decl = {"js": "const", "ts": "let", "java": "var", "rust": "let", "go": "", "c": "int"}[lang]
        if r < 0.35:
            if lang == "go":
                lines.append(f"{ind}{v} := {expr(style)}")
            elif lang == "ts":
                lines.append(f"{ind}{decl} {v}: {pick(['number', 'string', 'boolean'])} = {expr(style)};")
            else:
                lines.append(f"{ind}{decl} {v} = {expr(style)};")
        elif r < 0.5:
            cond = f"{v} == nil" if lang == "go" else f"{v}.is_none()" if lang == "rust" else f"{v} == null"
            paren = lang not in ("go", "rust")
            c = f"({cond})" if paren else cond
            err = {"js": f"throw new Error(\"invalid {v}\");", "ts": f"throw new Error(`invalid ${{{v}}}`);",
                   "java": f"throw new IllegalArgumentException(\"{v}\");",
                   "rust": f"return Err(Error::Invalid(\"{v}\".into()));",
                   "go": f"return fmt.Errorf(\"invalid {v}: %w\", err)", "c": "return -1;"}[lang]
            lines.append(f"{ind}if {c} {{\n{ind}    {err}\n{ind}}}")
        elif r < 0.65:
            it = ident(style)
            head = {"js": f"for (const {v} of {it})", "ts": f"for (const {v} of {it})",
                    "java": f"for (var {v} : {it})", "rust": f"for {v} in {it}.iter()",
                    "go": f"for _, {v} := range {it}", "c": f"for (int i = 0; i < {it}; i++)"}[lang]
            lines.append(f"{ind}{head} {{\n{ind}    {ident(style)}.{pick(VERBSC)}({v});\n{ind}}}")
        elif r < 0.8:
            lines.append(f"{ind}// {comment_text()}")
        else:
            semi = "" if lang == "go" else ";"
            lines.append(f"{ind}{ident(style)}.{ident(style)}({expr(style)}){semi}")
    return "\n".join(lines)


def c_like(target, lang):
    style = {"js": "camel", "ts": "camel", "java": "camel", "rust": "snake", "go": "camel", "c": "snake"}[lang]
    head = {"js": "'use strict';\n\nconst fs = require('fs');\n",
            "ts": "import { Request, Response } from 'express';\n",
            "java": "package com.example.service;\n\nimport java.util.*;\n",
            "rust": "use std::collections::HashMap;\nuse std::time::Duration;\n",
            "go": "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n)\n",
            "c": "#include <stdio.h>\n#include <stdlib.h>\n"}[lang]
    out = [head]
    while sum(map(len, out)) < target:
        name = ident(style)
        args = [ident(style) for _ in range(R.randint(0, 3))]
        if lang in ("js",):
            sig = f"function {name}({', '.join(args)}) {{"
        elif lang == "ts":
            sig = f"export async function {name}({', '.join(a + ': ' + pick(['number', 'string', 'Item[]']) for a in args)}): Promise<void> {{"
        elif lang == "java":
            sig = f"    public {pick(['int', 'String', 'void', 'List<Item>'])} {name}({', '.join('int ' + a for a in args)}) {{"
        elif lang == "rust":
            sig = f"pub fn {name}({', '.join(a + ': ' + pick(['u64', '&str', '&[u8]', 'usize']) for a in args)}) -> Result<{pick(['u64', 'String', '()'])}, Error> {{"
        elif lang == "go":
            sig = f"func {name}({', '.join(a + ' ' + pick(['int', 'string', '[]byte']) for a in args)}) error {{"
        else:
            sig = f"static int {name}({', '.join('int ' + a for a in args) or 'void'}) {{"
        ind = "        " if lang == "java" else ("\t" if lang == "go" else "    ")
        body = c_like_block(style, ind, lang)
        close = "    }" if lang == "java" else "}"
        if R.random() < 0.3:
            out.append(f"/// {comment_text()}" if lang == "rust" else f"/** {comment_text()} */")
        tail = {"rust": f"{ind}Ok(Default::default())", "go": f"{ind}return nil", "c": f"{ind}return 0;"}.get(lang, f"{ind}return;")
        out.append(f"{sig}\n{body}\n{tail}\n{close}\n")
    return "\n".join(out)


def sql(target):
    out = []
    while sum(map(len, out)) < target:
        t = ident("snake")
        r = R.random()
        if r < 0.4:
            cols = ", ".join(f"{ident('snake')}" for _ in range(R.randint(1, 5)))
            out.append(f"SELECT {cols}\nFROM {t}\nWHERE {ident('snake')} = {R.randint(1, 9999)}\n  AND {ident('snake')} > '{R.randint(2000, 2025)}-0{R.randint(1, 9)}-1{R.randint(0, 9)}'\nORDER BY {ident('snake')} DESC\nLIMIT {R.randint(1, 500)};")
        elif r < 0.7:
            cols = ",\n".join(f"    {ident('snake')} {pick(['BIGINT NOT NULL', 'TEXT', 'TIMESTAMPTZ DEFAULT now()', 'VARCHAR(255)', 'BOOLEAN'])}" for _ in range(R.randint(2, 7)))
            out.append(f"CREATE TABLE IF NOT EXISTS {t} (\n    id SERIAL PRIMARY KEY,\n{cols}\n);")
        else:
            out.append(f"UPDATE {t} SET {ident('snake')} = {ident('snake')} + 1 WHERE id IN (SELECT id FROM {ident('snake')} WHERE {ident('snake')} IS NULL);")
    return "\n\n".join(out)


def shell(target):
    out = ["#!/usr/bin/env bash", "set -euo pipefail", ""]
    while sum(map(len, out)) < target:
        v = ident("upper")
        r = R.random()
        if r < 0.3:
            out.append(f"{v}=\"${{{v}:-/var/lib/{ident('snake')}}}\"")
        elif r < 0.5:
            out.append(f"if [ ! -d \"${v}\" ]; then\n  mkdir -p \"${v}\"\n  echo \"created ${v}\" >&2\nfi")
        elif r < 0.7:
            out.append(f"for f in \"${v}\"/*.{pick(['log', 'json', 'txt'])}; do\n  grep -c '{pick(IDW)}' \"$f\" || true\ndone")
        elif r < 0.85:
            out.append(f"# {comment_text()}")
        else:
            out.append(f"curl -sf -X {pick(['GET', 'POST'])} \"https://api.example.com/v{R.randint(1, 3)}/{pick(IDW)}s?limit={R.randint(1, 100)}\" -H 'Accept: application/json' | jq '.{pick(IDW)}'")
    return "\n".join(out)


def code(target):
    lang = pick(["python", "js", "ts", "java", "rust", "go", "c", "sql", "shell"])
    if lang == "python":
        return lang, python(target)
    if lang == "sql":
        return lang, sql(target)
    if lang == "shell":
        return lang, shell(target)
    return lang, c_like(target, lang)


# -------------------------------------------------------------------- JSON

def jvalue(depth):
    r = R.random()
    if depth > 0 and r < 0.25:
        return {ident(pick(["snake", "camel"])): jvalue(depth - 1) for _ in range(R.randint(1, 6))}
    if depth > 0 and r < 0.4:
        return [jvalue(depth - 1) for _ in range(R.randint(0, 5))]
    if r < 0.55:
        return R.randint(-1000, 10 ** R.randint(1, 9))
    if r < 0.62:
        return round(R.uniform(-1000, 1000), R.randint(1, 6))
    if r < 0.68:
        return R.choice([True, False, None])
    if r < 0.75:
        return f"{R.randint(2000, 2025)}-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}T{R.randint(0, 23):02d}:{R.randint(0, 59):02d}:00Z"
    if r < 0.8:
        return "".join(R.choice("0123456789abcdef") for _ in range(R.choice([8, 16, 32])))
    if r < 0.85:
        return f"https://{pick(IDW)}.example.com/{pick(IDW)}/{R.randint(1, 99999)}"
    if r < 0.93:
        return en_sentence()
    return pick(NOUNS)


def jsondoc(target):
    recs = []
    shape = {ident("snake"): None for _ in range(R.randint(3, 9))}
    keys = list(shape)
    while len(json.dumps(recs)) < target:
        recs.append({k: jvalue(R.randint(0, 2)) for k in keys if R.random() < 0.9})
    doc = pick([{"data": recs, "has_more": R.random() < 0.5, "next_cursor": jvalue(0)}, recs,
                {"items": recs, "count": len(recs)}, recs[0] if len(recs) == 1 else {"results": recs}])
    indent = pick([None, None, 2, 4])
    sep = (",", ":") if indent is None and R.random() < 0.5 else None
    return json.dumps(doc, indent=indent, separators=sep, ensure_ascii=R.random() < 0.2)


# --------------------------------------------------------------------- CJK

ZH_N = w("""我们 你们 他们 公司 学生 老师 城市 国家 问题 时间 市场 技术 数据 系统 服务 用户 客户 项目 政府 经济
社会 文化 历史 环境 教育 科学 研究 医院 银行 工厂 农村 家庭 孩子 朋友 父母 电脑 手机 网络 软件 模型 算法
价格 成本 收入 质量 效率 安全 风险 能源 交通 天气 河流 山区 图书馆 博物馆 会议 报告 计划 目标 结果 原因
方法 产品 平台 团队 经理 工程师 医生 作者 读者 观众 音乐 电影 餐厅 早餐 咖啡 火车 飞机 道路 桥梁""")
ZH_V = w("""发展 提高 改善 分析 讨论 决定 完成 开始 支持 提供 需要 认为 发现 建立 推动 参加 解决 管理 使用
学习 工作 研究 介绍 调整 减少 增加 部署 测试 评估 批准 拒绝 计算 保护 建设 访问 购买 准备 选择""")
ZH_A = w("""重要 新 大 小 快速 稳定 复杂 简单 明显 主要 安全 便宜 昂贵 传统 现代 积极 有效 困难 清楚 严重""")
ZH_CONN = ["但是", "因此", "同时", "此外", "然而", "首先", "其次", "最后", "例如", "总之", "另外", "所以"]


def zh_sentence():
    r = R.random()
    if r < 0.3:
        s = f"{pick(ZH_N)}{pick(['正在', '已经', '将', '需要', ''])}{pick(ZH_V)}{pick(ZH_N)}"
    elif r < 0.5:
        s = f"{pick(ZH_CONN)}，{pick(ZH_N)}的{pick(ZH_N)}非常{pick(ZH_A)}"
    elif r < 0.65:
        s = f"在{R.randint(1990, 2025)}年{R.randint(1, 12)}月，{pick(ZH_N)}{pick(ZH_V)}了{R.randint(2, 900)}个{pick(ZH_N)}"
    elif r < 0.75:
        s = f"{pick(ZH_N)}是否应该{pick(ZH_V)}{pick(ZH_N)}"
        return s + "？"
    elif r < 0.85:
        s = f"“{pick(ZH_N)}{pick(ZH_V)}{pick(ZH_N)}”，{pick(ZH_N)}说"
    elif r < 0.92:
        s = f"{pick(ZH_N)}使用{pick(['API', 'GPU', 'Python', 'AI', 'CPU', 'JSON'])}来{pick(ZH_V)}{pick(ZH_N)}，效率提高了{R.randint(5, 90)}%"
    else:
        s = f"{pick(ZH_N)}、{pick(ZH_N)}和{pick(ZH_N)}都{pick(ZH_A)}"
    return s + pick(["。", "。", "。", "！"])


JA_N = w("""私 彼 彼女 会社 学生 先生 都市 国 問題 時間 市場 技術 データ システム サービス ユーザー お客様
プロジェクト 政府 経済 社会 文化 歴史 環境 教育 科学 研究 病院 銀行 工場 家族 子供 友達 両親 パソコン
スマートフォン ネットワーク ソフトウェア モデル 価格 品質 効率 安全 天気 川 山 図書館 博物館 会議 報告書
計画 目標 結果 方法 製品 チーム エンジニア 医者 音楽 映画 レストラン 朝ご飯 コーヒー 電車 飛行機 道 橋""")
JA_V = w("""発表しました 改善しました 分析しています 議論しました 決めました 完了しました 始めます 支援します
提供しています 必要です 考えています 見つけました 作りました 参加しました 解決しました 使っています
勉強しています 調べました 紹介します 減らしました 増やしました 確認してください 待っています 選びました""")
JA_A = w("""大切な 新しい 大きい 小さい 速い 安定した 複雑な 簡単な 便利な 高い 安い 古い 静かな 有名な""")


def ja_sentence():
    r = R.random()
    if r < 0.35:
        s = f"{pick(JA_N)}は{pick(JA_N)}を{pick(JA_V)}"
    elif r < 0.55:
        s = f"{pick(['しかし', 'また', 'そのため', 'さらに', '例えば', '最後に'])}、{pick(JA_A)}{pick(JA_N)}が{pick(JA_V)}"
    elif r < 0.7:
        s = f"{R.randint(1990, 2025)}年{R.randint(1, 12)}月に、{pick(JA_N)}は{R.randint(2, 900)}件の{pick(JA_N)}を{pick(JA_V)}"
    elif r < 0.8:
        return f"{pick(JA_N)}の{pick(JA_N)}はどうですか？"
    elif r < 0.9:
        s = f"「{pick(JA_N)}は{pick(JA_A)}{pick(JA_N)}です」と{pick(JA_N)}が言いました"
    else:
        s = f"{pick(JA_N)}で{pick(['AWS', 'Python', 'GPU', 'API', 'Docker'])}を使って{pick(JA_N)}を{pick(JA_V)}"
    return s + pick(["。", "。", "。", "！"])


KO_N = w("""우리 그 그녀 회사 학생 선생님 도시 나라 문제 시간 시장 기술 데이터 시스템 서비스 사용자 고객
프로젝트 정부 경제 사회 문화 역사 환경 교육 과학 연구 병원 은행 공장 가족 아이 친구 부모님 컴퓨터
스마트폰 네트워크 소프트웨어 모델 가격 품질 효율 안전 날씨 강 산 도서관 박물관 회의 보고서 계획 목표
결과 방법 제품 팀 엔지니어 의사 음악 영화 식당 아침 커피 기차 비행기 도로 다리""")
KO_V = w("""발표했습니다 개선했습니다 분석하고 있습니다 논의했습니다 결정했습니다 완료했습니다 시작합니다
지원합니다 제공합니다 필요합니다 생각합니다 발견했습니다 만들었습니다 참가했습니다 해결했습니다
사용합니다 공부합니다 조사했습니다 소개합니다 줄였습니다 늘렸습니다 확인하세요 기다리고 있습니다""")
KO_A = w("""중요한 새로운 큰 작은 빠른 안정적인 복잡한 간단한 편리한 비싼 싼 오래된 조용한 유명한""")


def ko_sentence():
    r = R.random()
    if r < 0.35:
        s = f"{pick(KO_N)}{pick(['은', '는', '이', '가'])} {pick(KO_N)}{pick(['을', '를'])} {pick(KO_V)}"
    elif r < 0.55:
        s = f"{pick(['하지만', '또한', '그래서', '게다가', '예를 들어', '마지막으로'])} {pick(KO_A)} {pick(KO_N)}{pick(['이', '가'])} {pick(KO_V)}"
    elif r < 0.7:
        s = f"{R.randint(1990, 2025)}년 {R.randint(1, 12)}월에 {pick(KO_N)}{pick(['은', '는'])} {R.randint(2, 900)}개의 {pick(KO_N)}{pick(['을', '를'])} {pick(KO_V)}"
    elif r < 0.8:
        return f"{pick(KO_N)}의 {pick(KO_N)}{pick(['은', '는'])} 어떻습니까?"
    elif r < 0.9:
        s = f"\"{pick(KO_N)}{pick(['은', '는'])} {pick(KO_A)} {pick(KO_N)}입니다\"라고 {pick(KO_N)}{pick(['이', '가'])} 말했습니다"
    else:
        s = f"{pick(KO_N)}에서 {pick(['AWS', 'Python', 'GPU', 'API', 'Docker'])}를 사용하여 {pick(KO_N)}{pick(['을', '를'])} {pick(KO_V)}"
    return s + pick([".", ".", ".", "!"])


def cjk(target):
    lang = pick(["zh", "ja", "ko"])
    f, sep = {"zh": (zh_sentence, ""), "ja": (ja_sentence, ""), "ko": (ko_sentence, " ")}[lang]
    paras, n = [], 0
    while n < target:
        p = sep.join(f() for _ in range(R.randint(2, 6)))
        paras.append(p)
        n += len(p)
    return lang, "\n\n".join(paras)[: max(target, 10)]


# ---------------------------------------------------------------- Cyrillic

RU_N = w("""компания студент учитель город страна проблема время рынок технология данные система сервис
пользователь клиент проект правительство экономика общество культура история среда образование наука
исследование больница банк завод семья ребёнок друг родители компьютер телефон сеть программа модель
цена качество эффективность безопасность погода река гора библиотека музей совещание отчёт план цель
результат метод продукт команда инженер врач музыка фильм ресторан завтрак кофе поезд самолёт дорога мост""")
RU_V = w("""разработал улучшил проанализировал обсудил решил завершил начал поддержал предоставил
обнаружил создал сократил увеличил проверил заменил объяснил описал предложил получил отправил
построил изменил запустил остановил обновил""")
RU_A = w("""важный новый большой маленький быстрый стабильный сложный простой удобный дорогой дешёвый
старый тихий известный надёжный современный""")
UK_N = w("""компанія студент вчитель місто країна проблема час ринок технологія дані система сервіс
користувач клієнт проєкт уряд економіка суспільство культура історія середовище освіта наука
дослідження лікарня банк завод родина дитина друг батьки комп'ютер телефон мережа програма модель
ціна якість ефективність безпека погода річка гора бібліотека музей нарада звіт план мета результат
метод продукт команда інженер лікар музика фільм ресторан сніданок кава потяг літак дорога міст""")
UK_V = w("""розробив покращив проаналізував обговорив вирішив завершив почав підтримав надав виявив
створив скоротив збільшив перевірив замінив пояснив описав запропонував отримав надіслав побудував
змінив запустив зупинив оновив""")
UK_A = w("""важливий новий великий маленький швидкий стабільний складний простий зручний дорогий дешевий
старий тихий відомий надійний сучасний""")


def cyr_sentence(lang):
    N, V, A = (RU_N, RU_V, RU_A) if lang == "ru" else (UK_N, UK_V, UK_A)
    conn = (["Однако", "Кроме того", "Поэтому", "Например", "В итоге", "Тем временем"] if lang == "ru"
            else ["Однак", "Крім того", "Тому", "Наприклад", "Зрештою", "Тим часом"])
    r = R.random()
    if r < 0.35:
        s = f"{pick(A).capitalize()} {pick(N)} {pick(V)} {pick(N)}"
    elif r < 0.55:
        s = f"{pick(conn)}, {pick(N)} {pick(V)} {pick(A)} {pick(N)}"
    elif r < 0.7:
        y = "году" if lang == "ru" else "році"
        s = f"В {R.randint(1990, 2025)} {y} {pick(N)} {pick(V)} {R.randint(2, 9000)} {pick(N)} ({R.randint(1, 99)}%)"
    elif r < 0.8:
        s = f"«{pick(N).capitalize()} {pick(V)} {pick(N)}», — {pick(['сказал', 'отметил']) if lang == 'ru' else pick(['сказав', 'зазначив'])} {pick(NAMES)}"
    elif r < 0.9:
        s = f"{pick(N).capitalize()} {pick(V)} {pick(['API', 'Python', 'GPU', 'Kubernetes', 'SQL'])} для {pick(N)}"
    else:
        s = f"{pick(N).capitalize()}, {pick(N)} и {pick(N)} — {pick(A)}" if lang == "ru" else f"{pick(N).capitalize()}, {pick(N)} та {pick(N)} — {pick(A)}"
    return s + pick([".", ".", ".", "!", "?"])


def cyrillic(target):
    lang = pick(["ru", "uk"])
    paras, n = [], 0
    while n < target:
        p = " ".join(cyr_sentence(lang) for _ in range(R.randint(2, 6)))
        paras.append(p)
        n += len(p)
    return lang, "\n\n".join(paras)[: max(target, 10)]


# ------------------------------------------------------------------- chats

def tool_def():
    props = {}
    for _ in range(R.randint(1, 5)):
        t = pick(["string", "integer", "number", "boolean"])
        p = {"type": t, "description": en_sentence()}
        if t == "string" and R.random() < 0.3:
            p["enum"] = [pick(IDW) for _ in range(R.randint(2, 4))]
        props[ident("snake")] = p
    return {"type": "function", "function": {
        "name": ident("snake"), "description": en_sentence(),
        "parameters": {"type": "object", "properties": props,
                       "required": [k for k in props if R.random() < 0.5]}}}


def user_text():
    r = R.random()
    t = loglen(20, 900)
    if r < 0.55:
        return english(t)
    if r < 0.7:
        lang, c = code(t)
        return f"{english(loglen(20, 200))}\n\n```{lang}\n{c}\n```"
    if r < 0.8:
        return jsondoc(t)
    if r < 0.9:
        return cjk(t // 3)[1]
    return cyrillic(t // 2)[1]


def chat():
    msgs = []
    if R.random() < 0.8:
        msgs.append({"role": "system", "content": english(loglen(30, 900))})
    tools = [tool_def() for _ in range(R.randint(1, 6))] if R.random() < 0.6 else None
    for turn in range(R.randint(1, 5)):
        if R.random() < 0.1:
            content = [{"type": "text", "text": user_text()},
                       {"type": "image_url", "image_url": {"url": f"https://img.example.com/{R.randint(1, 10**6)}.png"}}]
        else:
            content = user_text()
        m = {"role": "user", "content": content}
        if R.random() < 0.1:
            m["name"] = pick(NAMES).lower()
        msgs.append(m)
        if tools and R.random() < 0.5:
            calls = []
            for i in range(R.randint(1, 2)):
                fn = pick(tools)["function"]
                args = {k: (R.randint(0, 100) if v["type"] in ("integer", "number") else
                            (R.random() < 0.5) if v["type"] == "boolean" else pick(NOUNS))
                        for k, v in fn["parameters"]["properties"].items()}
                calls.append({"id": f"call_{R.randint(10**8, 10**9)}", "type": "function",
                              "function": {"name": fn["name"], "arguments": json.dumps(args)}})
            msgs.append({"role": "assistant", "content": None, "tool_calls": calls})
            for c in calls:
                msgs.append({"role": "tool", "tool_call_id": c["id"], "content": jsondoc(loglen(30, 700))})
        if R.random() < 0.8:
            msgs.append({"role": "assistant", "content": english(loglen(20, 700))})
    body = {"model": pick(["gpt-4o", "gpt-4o-mini", "gpt-4.1"]), "messages": msgs}
    if tools:
        body["tools"] = tools
    if R.random() < 0.3:
        body["temperature"] = round(R.random(), 2)
    return body


def main():
    gens = {
        "english": lambda: ("en", english(loglen(60, 7000))),
        "code": lambda: code(loglen(60, 7000)),
        "json": lambda: ("json", jsondoc(loglen(60, 7000))),
        "cjk": lambda: cjk(loglen(15, 2500)),
        "cyrillic": lambda: cyrillic(loglen(30, 4000)),
    }
    for cls, g in gens.items():
        with open(os.path.join(OUT, f"{cls}.jsonl"), "w", encoding="utf-8") as f:
            for i in range(N_PER_CLASS):
                lang, text = g()
                f.write(json.dumps({"id": f"{cls}-{i}", "lang": lang, "text": text}, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "chat.jsonl"), "w", encoding="utf-8") as f:
        for i in range(N_PER_CLASS):
            f.write(json.dumps({"id": f"chat-{i}", "body": chat()}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
