# GPU training image for mgmt_nb. The base image ships TensorFlow 2.21 with CUDA; the package
# installs on top with the same pins as every other environment (settings.ini, constraints.txt).
#   docker build -t mgmt_nb .
#   docker run --gpus all -v /path/to/rsna:/data/rsna -v /path/to/tcga:/data/tcga -v $PWD/runs:/work/runs mgmt_nb \
#     papermill nbs/05_train.ipynb runs/flair.ipynb -p seq FLAIR -p data_dir /data/rsna -p external_dir /data/tcga
FROM tensorflow/tensorflow:2.21.0-gpu

WORKDIR /work
COPY settings.ini setup.py constraints.txt README.md ./
COPY mgmt_nb ./mgmt_nb
RUN grep -v -E '^(tensorflow|nvidia-|tensorboard|ml-dtypes|protobuf|numpy|h5py|grpcio)' constraints.txt > /tmp/constraints-gpu.txt \
 && python -m pip install --no-cache-dir -c /tmp/constraints-gpu.txt -e . \
 && python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mgmt_nb)" \
 && python -m pip check
COPY nbs ./nbs

ENV MGMT_NB_CACHE=/work/cache \
    TF_FORCE_GPU_ALLOW_GROWTH=true
CMD ["papermill", "nbs/05_train.ipynb", "runs/train.ipynb", "-p", "seq", "FLAIR"]
