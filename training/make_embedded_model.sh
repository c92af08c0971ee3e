#!/usr/bin/env bash
# Rebuild the embedded default model (r3d_ros/assets/r3d_tiny) and its held-out table on a CPU, one thread per
# stage. Wall times on the shared 2-core dev VM are in training/README.md ("The embedded default model").
#   data    r3d-make-data: 320 scenes (256 train / 32 val / 32 test)
#   views   with VIEWS=selected (a view tower in the model; default VIEWS=none): every split's selected views (and
#           the test split's ring views and views selected with Eq. 7's fitted weights, for the ablation)
#           rendered once into data/embedded/views (r3d-train views; ~12 min for train on two workers)
#   sft     tiny_sft_pointer (3 epochs, 1,344 steps; object tokens whose boxes are referred to as <obj_k>, picked
#           by the slot pointer)
#   classes the shape class head fitted on the train scenes' proposals (4 draws each) in place of the token head
#           SFT trained (training/classes.py): the SFT model with it is $sft/classes
#   grpo    tiny_grpo_pointer from $sft/classes (30 steps x 16 prompts, a checkpoint every 10)
#   select  $sft/classes and every GRPO checkpoint, decoded as the reasoner decodes (greedy, 2 sampled retries of a
#           refused answer) on the first $VAL_LIMIT (default 224) val records; the highest Format + Acc@0.25 + SemSim
#           + KeyFact wins (the SFT model first: GRPO has to beat it to be chosen)
#   test    answer prior, SFT only (its token class head), SFT + GRPO (the selected checkpoint; and without the grounded grammar or
#           without its answer shapes, the ablations) on the test split, SFT + GRPO on the
#           paraphrased test questions, and the proposals' ceiling; the table
#   ship    the selected model -> r3d_ros/assets/r3d_tiny, result JSONs -> training/results/
# Usage: [VIEWS=selected] bash training/make_embedded_model.sh [data|views|sft|classes|grpo|select|test|ship]...
#        (default: all, in order)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
bin=.venv/bin
data=data/embedded sft=runs/sft_pointer grpo=runs/grpo_pointer
points=(--max-points 16384)   # the scene clouds the SFT and GRPO configs train on (data.max_points)
decode=(--max-new-tokens 512 --regenerations 2 "${points[@]}")   # as the reasoner runs (config/reasoner.yaml)
views=${VIEWS:-none}
tower=()   # the view tower and the views SFT trains it on
[ "$views" = none ] || tower=(--set model.with_views=true --set data.views="$views")
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(data views sft classes grpo select test ship)
t() { local s=$SECONDS; "$@"; echo "[$(date +%T)] $* : $((SECONDS - s)) s" >&2; }
for stage in "${stages[@]}"; do
  case $stage in
    data)   t $bin/r3d-make-data --scenes 320 --out $data --no-progress ;;
    views)  [ "$views" = none ] && continue
            for split in train val test; do t $bin/r3d-train views --data $data --split $split --mode "$views" --workers 2; done
            for mode in ring learned; do t $bin/r3d-train views --data $data --split test --mode $mode --workers 2; done ;;
    sft)    t $bin/r3d-train sft  --config tiny_sft_pointer --data $data --output-dir $sft "${tower[@]}" ;;
    classes) t $bin/r3d-train classes --data $data --model $sft/final --output-dir $sft/classes "${points[@]}" ;;
    grpo)   # GRPO's rows carry no rendered views (training/grpo.py): a view-tower model would learn without them
            [ "$views" = none ] || { echo "grpo: skipped with VIEWS=$views" >&2; continue; }
            t $bin/r3d-train grpo --config tiny_grpo_pointer --data $data --model $sft/classes --output-dir $grpo ;;
    select) t $bin/r3d-train select --data $data --split val --limit ${VAL_LIMIT:-224} "${decode[@]}" --out-dir results/val \
                --link $grpo/selected $sft/classes $(ls -d $grpo/checkpoint-* 2>/dev/null | sort -t- -k2 -n) ;;
    test)
      mkdir -p results
      t $bin/r3d-train evaluate --data $data --prior --name "answer prior" --out results/prior.json
      t $bin/r3d-train evaluate --data $data --model $sft/final --name "SFT only" "${decode[@]}" --out results/sft.json
      t $bin/r3d-train evaluate --data $data --model $grpo/selected --name "SFT + GRPO" "${decode[@]}" \
          --out results/grpo.json
      t $bin/r3d-train evaluate --data $data --model $grpo/selected --name "SFT + GRPO, no grammar" --no-grammar \
          "${decode[@]}" --out results/grpo_no_grammar.json
      t $bin/r3d-train evaluate --data $data --model $grpo/selected --name "SFT + GRPO, no answer shapes" --no-shapes \
          "${decode[@]}" --out results/grpo_no_shapes.json
      t $bin/r3d-train evaluate --data $data --split test_paraphrase --model $grpo/selected \
          --name "SFT + GRPO, paraphrased" "${decode[@]}" --out results/grpo_paraphrase.json
      t $bin/r3d-train ceiling --data $data --model $grpo/selected --split test "${points[@]}" --out results/ceiling.json
      if [ "$views" != none ]; then   # issue 22's ablation: the same model given ring views, fitted-weight views, none
        for v in ring learned none; do
          t $bin/r3d-train evaluate --data $data --model $grpo/selected --views $v --name "SFT + GRPO, $v views" \
              "${decode[@]}" --out results/views_$v.json
          $bin/r3d-train compare --data $data results/views_$v.json results/grpo.json --out results/compare_views_$v.json
        done
      fi
      $bin/r3d-train table results/prior.json results/sft.json results/grpo.json results/grpo_no_grammar.json \
          results/grpo_no_shapes.json results/grpo_paraphrase.json \
          | tee results/table.md ;;
    ship)
      rm -rf r3d_ros/assets/r3d_tiny && mkdir -p r3d_ros/assets/r3d_tiny training/results
      cp $grpo/selected/{config.json,generation_config.json,model.safetensors,r3d_processor.json} \
         $grpo/selected/{tokenizer.json,tokenizer_config.json,chat_template.jinja} r3d_ros/assets/r3d_tiny/
      realpath --relative-to=. $grpo/selected > r3d_ros/assets/r3d_tiny/SOURCE   # which checkpoint this is
      cp $sft/classes/classes.json training/results/
      cp results/prior.json results/sft.json results/grpo.json results/grpo_no_grammar.json results/grpo_no_shapes.json \
         results/grpo_paraphrase.json \
         results/ceiling.json \
         results/table.md results/val/selection.json training/results/
      [ "$views" = none ] || cp results/views_{ring,learned,none}.json results/compare_views_*.json training/results/ ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
