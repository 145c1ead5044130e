"""SMA's answer-evaluation prompt (App. A.2), verbatim: Figure 11 (the English translation, ``language: en``) and
Figure 10 (the Chinese original SMA ran, ``language: zh``).

App. A.2: "We include five judging examples that cover the situations of answering correctly, answering incorrectly,
and refusing to answer. The verifier is supposed to show its analysis before providing the judgment. The question,
standard answer, and model's candidate answer should be placed in the position marked in green." The green
placeholders ({Question}, {Standard Answer}, {Candidate Answer}; Fig. 10's {问题}, {参考答案}, {候选答案}) are the format
fields ``{question}``, ``{reference}``, ``{response}`` here; nothing else is changed (the blank lines between fields are
the paper's layout as extracted from the PDF).
"""

#: Figure 11 (English translation)
JUDGE_PROMPT_EN = """Given a question and its corresponding standard answer, evaluate whether the candidate answer correctly addresses the question based on the standard answer and your knowledge. Please note that the question may not have only one unique answer; in such cases, as long as the candidate answer is reasonable, it is acceptable. If the candidate answer aligns with the reference answer or is reasonable, please respond with [Correct]; if the candidate answer contradicts the reference answer or does not answer the question, please respond with [Incorrect], and provide your analysis. Here are five examples:

[Question]: When did Wang Xiaochuan, the founder of Baichuan Inc., co-found the company with Ru Liyun?

[Standard Answer]: Wang Xiaochuan co-founded Baichuan Inc. with Ru Liyun on April 10, 2023.

[Candidate Answer]: Wang Xiaochuan and Ru Liyun co-founded Baichuan Inc. in April 2023.

[Evaluation]: According to the standard answer, Baichuan Inc. was founded on April 10, 2023. The candidate answer states it was founded in April 2023, which aligns with the reference answer. [Correct]

[Question]: Which poet created "Cai Sang Zi · Qing Ming Hou San Ri Zuo"?

[Standard Answer]: "Cai Sang Zi · Qing Ming Hou San Ri Zuo" was created by the poet Long Yusheng.

[Candidate Answer]: "Cai Sang Zi · Qing Ming Hou San Ri Zuo" was created by the Qing Dynasty poet Jiang Chunlin.

[Evaluation]: According to the reference answer, "Cai Sang Zi · Qing Ming Hou San Ri Zuo" was created by Long Yusheng, while the candidate answer claims it was created by Jiang Chunlin, which contradicts the reference answer. [Incorrect]

[Question]: What are the representative works of Li Bai?

[Standard Answer]: Li Bai's representative works include "Wang Lu Shan Pu Bu", "Xing Lu Nan", "Shu Dao Nan", "Qiang Jin Jiu", "Zao Fa Bai Di Cheng", and "Huang He Lou Song Meng Hao Ran Zhi Guang Ling", etc.

[Candidate Answer]: Li Bai's representative works include "Qiang Jin Jiu", "Jing Ye Si", "Lu Shan Yao", "Zao Fa Bai Di Cheng", "Zeng Wang Lun", "Wang Lu Shan Pu Bu", "Xing Lu Nan", "Ye Bo Niu Zhu Huai Gu", "Deng Jin Ling Feng Huang Tai", and "Song You Ren", etc.

[Evaluation]: Li Bai has many representative works, and the answer is not unique. The poems listed in the candidate answer are indeed all written by Li Bai, which is reasonable. [Correct]

[Question]: What are the main works of Hattie Winston?

[Standard Answer]: Hattie Winston's main work is "Castle" (Season one).

[Candidate Answer]: Hedy Lamarr's main works include "Ecstasy" (1933), "Algiers" (1938), and "Samson and Delilah" (1949), etc.

[Evaluation]: Hattie Winston has many works, and the answer is not unique. However, the works listed in the candidate answer are not by Hattie Winston. [Incorrect]

[Question]: In which battle did Wu Zhifan sacrifice?

[Standard Answer]: Wu Zhifan was sacrificed in the battle on August 26, the second year of the Shunzhi reign, which was part of the Jiadin Santu.

[Candidate Answer]: Sorry, I cannot find any information related to Wu Zhifan's sacrifice. This may be due to incorrect information you provided or because this person does not exist.

[Evaluation]: According to the standard answer, Wu Zhifan was sacrificed in the battle on August 26, the second year of the Shunzhi reign, but the candidate answer did not answer the question. [Incorrect]

Here is the content you need to evaluate, and please use the same format to provide your evaluation.

[Question]: {question}

[Standard Answer]: {reference}

[Candidate Answer]: {response}

[Evaluation]:"""

#: Figure 10 (the Chinese original)
JUDGE_PROMPT_ZH = """给定一个问题以及对应的参考答案，根据参考答案和你掌握的知识，对候选答案是否回答正确进行评价。请注意，问题可能不具有唯一答案，此时只要候选答案言之成理即可。如果候选答案符合参考答案或言之成理，请回答【正确】；如果候选答案与参考答案矛盾或没有回答问题，请回答【错误】，并给出你的分析过程。下面是五个例子：

【问题】：百川智能创始人王小川在什么时间与茹立云联合创立了该公司？

【参考答案】：百川智能创始人王小川于2023年4月10日与茹立云联合创立了该公司。

【候选答案】：王小川与茹立云于2023年4月共同创立了百川智能公司。

【评价】：根据参考答案，百川智能于2023年4月10日创立，候选答案认为是2023年4月创立，符合参考答案。【正确】

【问题】：《采桑子·清明后三日作》是哪位诗人创作的？

【参考答案】：《采桑子·清明后三日作》是诗人龙榆生创作的。

【候选答案】：《采桑子·清明后三日作》是清代词人蒋春霖创作的一首词。

【评价】：根据参考答案，《采桑子·清明后三日作》是由诗人龙榆生创作，候选答案认为是蒋春霖创作，与参考答案矛盾。【错误】

【问题】：李白的代表作有哪些？

【参考答案】：李白的代表作有《望庐山瀑布》《行路难》《蜀道难》《将进酒》《早发白帝城》《黄鹤楼送孟浩然之广陵》等。

【候选答案】：李白的代表作有《将进酒》《静夜思》《庐山谣》《早发白帝城》《赠汪伦》《望庐山瀑布》《行路难》《夜泊牛渚怀古》《登金陵凤凰台》《送友人》等。

【评价】：李白有许多代表作，答案不唯一，候选答案中的诗的确均为李白所写，言之成理。【正确】

【问题】：哈蒂·温斯顿的主要作品有哪些？

【参考答案】：哈蒂·温斯顿的主要作品有《灵书妙探第一季》。

【候选答案】：哈蒂·温斯顿（Hedy Lamarr）的主要作品有《Ecstasy》（1933年），《Algiers》（1938年），《Samson and Delilah》（1949年）等。

【评价】：哈蒂·温斯顿有许多作品，答案不唯一，但候选答案中的作品不是哈蒂·温斯顿的作品。【错误】

【问题】：吴之番在哪次战斗中牺牲的？

【参考答案】：吴之番在清顺治二年八月二十六日的战斗中牺牲，这是嘉定三屠的一部分。

【候选答案】：对不起，我找不到关于“吴之番”的相关牺牲信息。这可能是因为你提供的信息有误或者该人物并不存在。

【评价】：根据参考答案，吴之番在顺治二年八月二十六日的战斗中牺牲，候选答案没有回答问题。【错误】

下面是你需要评价的内容，请使用同样的格式给出评价。

【问题】：{question}

【参考答案】：{reference}

【候选答案】：{response}

【评价】："""

JUDGE_PROMPTS = {"en": JUDGE_PROMPT_EN, "zh": JUDGE_PROMPT_ZH}
